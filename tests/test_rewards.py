"""The reward function for TRL's online trainers: values against the posterior on token dicts
built here by hand (float64, exact), pickling, bad input, and a real GRPOTrainer run."""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import pickle

import pytest
import torch
from conftest import tiny_reward_net, word_tokenizer

import bt_laplace as btl
from bt_laplace.rewards import PosteriorRewardFunction
from bt_laplace.rlhf import penalize

TRAIN_ROWS = [
    {"prompt": "what color is the sky ", "chosen": "blue", "rejected": "green"},
    {"prompt": "what color is the sky ", "chosen": "the sky is blue", "rejected": "no"},
    {"prompt": "hello ", "chosen": "world", "rejected": "bad bad"},
    {"prompt": "hello ", "chosen": "hello world", "rejected": "what"},
    {"prompt": "is it good ", "chosen": "yes very good", "rejected": "dog"},
    {"prompt": "is it good ", "chosen": "i like it", "rejected": "no no"},
]
PROMPTS = ["what color is the sky "] * 3 + ["hello "] * 2
COMPLETIONS = ["blue", "red", "the sky is green", "world", "i like it very good"]
GROUPS = [0, 0, 0, 1, 1]
#: the same, as conversations (TRL's conversational prompt-completion format)
CHAT_PROMPTS = [[{"role": "user", "content": p.strip()}] for p in PROMPTS]
CHAT_COMPLETIONS = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]

PENALTIES = {
    "mean": {"k": 0.0},
    "std": {"k": 1.5},
    "variance": {"penalty": "variance", "k": 0.5},
    "quantile": {"penalty": "quantile", "level": 0.1},
    "kl": {"penalty": "kl", "beta": 0.5},
    "kl_optimistic": {"penalty": "kl_optimistic", "beta": 2.0},
}


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer("llama")


@pytest.fixture(scope="module")
def text_posterior(tokenizer):
    """A last-layer posterior of a tiny float64 Llama reward model, fitted on text pairs (the
    fit keeps the tokenizer as the posterior's text_collator)."""
    net = tiny_reward_net("llama", tokenizer).double()
    model = btl.PairwiseRewardModel(net).eval()
    loader = btl.text_preference_dataloader(TRAIN_ROWS, tokenizer, batch_size=4)
    return btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", prior_precision=1.0
    )


def pad(ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(map(len, ids))
    input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def string_tokens(tokenizer) -> dict[str, torch.Tensor]:
    """Prompt + completion + eos through the tokenizer, as TRL's RewardTrainer did in training."""
    texts = [p + c + "</s>" for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    return pad(ids, tokenizer.pad_token_id)


def chat_tokens(tokenizer) -> dict[str, torch.Tensor]:
    """Prompt + completion messages through the chat template, tokenized as TRL's GRPO does for
    a reward model (the rendered text, add_special_tokens=False)."""
    from trl.data_utils import apply_chat_template

    texts = [
        apply_chat_template({"messages": p + c}, tokenizer)["text"]
        for p, c in zip(CHAT_PROMPTS, CHAT_COMPLETIONS, strict=True)
    ]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return pad(ids, tokenizer.pad_token_id)


# ---------------------------------------------------------------------- values
@pytest.mark.parametrize("kind", ["string", "conversational"])
@pytest.mark.parametrize("options", PENALTIES.values(), ids=PENALTIES.keys())
def test_rewards_equal_penalized_posterior_moments_of_the_token_dicts(
    text_posterior, tokenizer, kind, options
):
    prompts, completions, tokens = (
        (PROMPTS, COMPLETIONS, string_tokens(tokenizer))
        if kind == "string"
        else (CHAT_PROMPTS, CHAT_COMPLETIONS, chat_tokens(tokenizer))
    )
    fn = btl.make_reward_function(text_posterior, tokenizer, **options)
    got = fn(prompts=prompts, completions=completions)
    mean, variance = text_posterior(tokens)
    assert mean.dtype == torch.float64 and bool((variance > 0).all())
    assert got == penalize(mean, variance, **options).tolist()  # exact
    assert all(type(r) is float for r in got)
    if options == {"k": 0.0}:
        assert got == mean.tolist()  # k=0: the posterior mean


@pytest.mark.parametrize("kind", ["string", "conversational"])
def test_relative_rewards_are_relative_to_the_completions_of_the_same_prompt(
    text_posterior, tokenizer, kind
):
    prompts, completions, tokens = (
        (PROMPTS, COMPLETIONS, string_tokens(tokenizer))
        if kind == "string"
        else (CHAT_PROMPTS, CHAT_COMPLETIONS, chat_tokens(tokenizer))
    )
    fn = btl.make_reward_function(text_posterior, tokenizer, k=1.0, relative=True)
    got = torch.tensor(fn(prompts, completions), dtype=torch.float64)
    mean, variance = text_posterior.relative_reward(tokens, "group", groups=GROUPS)
    assert got.tolist() == (mean - variance.sqrt()).tolist()
    # the same as each prompt's completions on their own, one call per prompt
    for g in set(GROUPS):
        rows = torch.tensor([i for i, x in enumerate(GROUPS) if x == g])
        m, v = text_posterior.relative_reward({k: t[rows] for k, t in tokens.items()}, "group")
        torch.testing.assert_close(got[rows], m - v.sqrt(), rtol=0, atol=1e-12)
    # relative variances drop what a prompt's completions share: below the absolute ones
    assert bool((variance < text_posterior(tokens).variance).all())


def test_the_posteriors_own_tokenizer_is_used_when_none_is_given(text_posterior, tokenizer):
    ours = btl.make_reward_function(text_posterior)
    theirs = btl.make_reward_function(text_posterior, tokenizer)
    assert ours.collator is text_posterior.text_collator
    assert ours(PROMPTS, COMPLETIONS) == theirs(PROMPTS, COMPLETIONS)


def test_trl_keyword_arguments_are_accepted_and_logged(text_posterior, tokenizer):
    fn = btl.make_reward_function(text_posterior, tokenizer, k=2.0, name="bt")
    extra: dict[str, list] = {}
    metrics: dict[str, list] = {}
    got = fn(
        prompts=PROMPTS,
        completions=COMPLETIONS,
        completion_ids=[[1, 2]] * 5,
        trainer_state=object(),
        answer=["x"] * 5,  # a column of the dataset
        log_extra=lambda column, values: extra.setdefault(column, []).extend(values),
        log_metric=lambda name, value: metrics.setdefault(name, []).append(value),
    )
    mean, variance = text_posterior(string_tokens(tokenizer))
    std = variance.sqrt()
    assert got == (mean - 2.0 * std).tolist()
    assert extra == {"bt/mean": mean.tolist(), "bt/std": std.tolist()}
    assert metrics == {
        "rewards/bt/posterior_mean": [float(mean.mean())],
        "rewards/bt/posterior_std": [float(std.mean())],
        "rewards/bt/posterior_std_max": [float(std.max())],
    }
    quiet = btl.make_reward_function(text_posterior, tokenizer, k=2.0, log=False)
    assert quiet(PROMPTS, COMPLETIONS, log_extra=pytest.fail, log_metric=pytest.fail) == got


def test_name_and_repr_are_what_trl_logs(text_posterior):
    from trl.trainer.utils import get_callable_name, is_async_callable

    fn = btl.make_reward_function(text_posterior, penalty="kl", beta=0.1, relative=True)
    assert isinstance(fn, PosteriorRewardFunction)
    assert get_callable_name(fn) == "posterior_reward" and not is_async_callable(fn)
    assert get_callable_name(btl.make_reward_function(text_posterior, name="bt")) == "bt"
    assert repr(fn) == (
        "PosteriorRewardFunction('posterior_reward', penalty='kl', beta=0.1, relative=True)"
    )


# ---------------------------------------------------------------------- pickling
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_pickle_round_trip_scores_the_same(text_posterior, tokenizer, relative):
    fn = btl.make_reward_function(
        text_posterior, tokenizer, penalty="quantile", level=0.2, relative=relative, name="bt"
    )
    again = pickle.loads(pickle.dumps(fn))
    assert again.__name__ == "bt" and repr(again) == repr(fn)
    assert again.posterior is not text_posterior
    for prompts, completions in ((PROMPTS, COMPLETIONS), (CHAT_PROMPTS, CHAT_COMPLETIONS)):
        assert again(prompts, completions) == fn(prompts, completions)


@pytest.mark.slow
def test_scores_the_same_in_a_spawned_process(text_posterior):
    """As TRL's asynchronous GRPO does: the function is pickled into a spawned process."""
    fn = btl.make_reward_function(text_posterior, k=1.0, relative=True)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        got = pool.submit(fn, prompts=CHAT_PROMPTS, completions=CHAT_COMPLETIONS).result(300)
    assert got == fn(CHAT_PROMPTS, CHAT_COMPLETIONS)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "prompts, completions, error, match",
    [
        (PROMPTS[:2], COMPLETIONS, ValueError, r"`prompts` has 2 entries but `completions` 5"),
        (PROMPTS[:1], "blue", TypeError, r"`completions` must be a list .* got str"),
        ("hello", ["world"], TypeError, r"`prompts` must be a list .* got str"),
        (PROMPTS[:1], [[20, 21]], TypeError, r"entry 0 is list .*completion_ids.*decode"),
        (PROMPTS[:2], ["blue", None], TypeError, r"`completions` must hold texts.*entry 1"),
        ([["hi"]], ["blue"], TypeError, r"`prompts` must hold texts.*entry 0 is list"),
        (CHAT_PROMPTS[:1], [[{"content": "blue"}]], TypeError, r"entry 0 is list"),
    ],
    ids=[
        "lengths",
        "str-completions",
        "str-prompts",
        "token-ids",
        "none",
        "bad-prompt",
        "no-role",
    ],  # fmt: skip
)
def test_bad_calls_are_explained(text_posterior, prompts, completions, error, match):
    fn = btl.make_reward_function(text_posterior)
    with pytest.raises(error, match=match):
        fn(prompts=prompts, completions=completions)
    with pytest.raises(error, match=match):
        fn.moments(prompts, completions)


def test_no_completions_no_rewards_but_no_moments(text_posterior):
    fn = btl.make_reward_function(text_posterior)
    assert fn(prompts=[], completions=[]) == []
    with pytest.raises(ValueError, match=r"`completions` is empty"):
        fn.moments([], [])


def test_a_posterior_without_tokenizer_asks_for_one(reward_model, pair_loader):
    post = btl.fit_reward_posterior(reward_model, pair_loader, prior_precision=1.0)
    assert post.text_collator is None
    with pytest.raises(TypeError, match=r"needs the reward model's tokenizer.*set_tokenizer"):
        btl.make_reward_function(post)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"penalty": "mad"}, ValueError, r"`penalty` must be one of"),
        ({"penalty": "kl"}, ValueError, r"needs `beta`"),
        ({"penalty": "quantile", "k": 2.0}, ValueError, r"`k` is used by penalty 'std'"),
        ({"k": math.nan}, ValueError, r"`k` must be a finite number"),
        ({"relative": "yes"}, TypeError, r"`relative` must be a bool"),
        ({"name": ""}, TypeError, r"`name` must be a non-empty string"),
        ({"max_length": 8}, ValueError, r"\['max_length'\] set how `tokenizer` renders"),
    ],
    ids=[
        "penalty",
        "kl-without-beta",
        "k-with-quantile",
        "nan-k",
        "relative",
        "name",
        "options-without-tokenizer",
    ],  # fmt: skip
)
def test_bad_options_are_refused_up_front(text_posterior, kwargs, error, match):
    with pytest.raises(error, match=match):
        btl.make_reward_function(text_posterior, **kwargs)


def test_bad_posterior_or_collator(text_posterior, tokenizer):
    with pytest.raises(TypeError, match=r"`posterior` must be a bt_laplace.RewardPosterior"):
        btl.make_reward_function(text_posterior.laplace, tokenizer)
    with pytest.raises(TypeError, match=r"`collator` must be a bt_laplace.TextPairCollator"):
        PosteriorRewardFunction(text_posterior, tokenizer)
    too_short = btl.make_reward_function(
        text_posterior, tokenizer, max_length=4, long_queries="refuse"
    )
    with pytest.raises(ValueError, match=r"item 0 has \d+ tokens, more than max_length=4; raise"):
        too_short(PROMPTS, COMPLETIONS)


# ---------------------------------------------------------------------- real TRL trainers
@pytest.mark.slow
@pytest.mark.parametrize(
    "trainer_name, kind",
    [("GRPO", "conversational"), ("GRPO", "string"), ("RLOO", "conversational")],
    ids=["grpo-conversational", "grpo-string-relative", "rloo-conversational"],
)
def test_trl_trainer_trains_on_the_posterior_reward_and_logs_its_uncertainty(
    text_posterior, tokenizer, trainer_name, kind, tmp_path
):
    """Two steps of TRL's GRPO (or RLOO) trainer with a tiny Llama policy on CPU and
    transformers generation: TRL logs the function under its name, our log_metric entries, and
    our log_extra columns in the completions table, whose rewards are ours."""
    import datasets
    import pandas as pd
    import transformers as tf
    import trl

    config = tf.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    policy = tf.LlamaForCausalLM(config)
    prompts = CHAT_PROMPTS if kind == "conversational" else PROMPTS
    dataset = datasets.Dataset.from_list([{"prompt": p} for p in prompts[2:4]] * 2)
    fn = btl.make_reward_function(text_posterior, k=1.0, relative=kind == "string")
    args = getattr(trl, f"{trainer_name}Config")(
        str(tmp_path), max_steps=2, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=4, beta=0.0, use_cpu=True, bf16=False,
        activation_checkpointing=False, report_to=[], logging_steps=1, save_strategy="no",
        seed=0, log_completions=True,
    )  # fmt: skip
    trainer = getattr(trl, f"{trainer_name}Trainer")(
        model=policy, reward_funcs=fn, args=args, train_dataset=dataset,
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()

    name = "rewards/posterior_reward"
    steps = [h for h in trainer.state.log_history if f"{name}/mean" in h]
    assert len(steps) == 2
    for h in steps:
        for key in ("mean", "std", "posterior_mean", "posterior_std", "posterior_std_max"):
            assert math.isfinite(h[f"{name}/{key}"])
        assert 0 < h[f"{name}/posterior_std"] <= h[f"{name}/posterior_std_max"]
    # the completions table of the last step (what TRL prints and sends to wandb/trackio; GRPO
    # also writes it to parquet): the rewards TRL got are ours, recomputed here, beside our
    # log_extra columns
    table = {k: list(v) for k, v in trainer._logs.items() if k in ("prompt", "completion")}
    table["reward"] = list(trainer._logs["rewards"]["posterior_reward"])
    table.update({k: list(v) for k, v in trainer._logs["extra"].items()})
    if trainer_name == "GRPO":
        written = pd.read_parquet(tmp_path / "completions" / "completions_00002.parquet")
        assert set(written) >= {"posterior_reward", "posterior_reward/mean", "posterior_reward/std"}
        assert written["posterior_reward/std"].tolist() == table["posterior_reward/std"]
    table_prompts, table_completions = table["prompt"], table["completion"]
    assert len(table_prompts) == 2 and table_prompts[0] in prompts[2:4]
    again = fn(table_prompts, table_completions)
    torch.testing.assert_close(
        torch.tensor(table["reward"]), torch.tensor(again, dtype=torch.float32)
    )
    mean, variance = fn.moments(table_prompts, table_completions)
    assert table["posterior_reward/mean"] == mean.tolist()
    assert table["posterior_reward/std"] == variance.sqrt().tolist()
    last = steps[-1]
    assert last[f"{name}/posterior_std"] == pytest.approx(float(variance.sqrt().mean()), rel=1e-6)
    print(trainer_name, kind, {k: v for k, v in last.items() if k.startswith("reward")})


def test_completions_over_max_length_get_a_reward_and_are_counted(text_posterior, tokenizer):
    """No lost reward: over the fit's max_length a completion is scored whole, over the model's
    64 positions it keeps its last 64 tokens (a Llama reads the reward at the last token), with
    a warning and a metric; long_queries='refuse' refuses."""
    fn = btl.make_reward_function(text_posterior, tokenizer, k=1.0, max_length=8, name="bt")
    long = " ".join(["the sky is blue"] * 20)  # 80 words
    completions = [
        "i like it very good yes very good",
        long,
        "world",
    ]  # with the prompt: 15, 83, 4 tokens
    ids = [fn.collator.encode_item(c, p) for c, p in zip(completions, PROMPTS[2:], strict=True)]
    assert [len(i) > 8 for i in ids] == [True, True, False] and len(ids[1]) > 64
    metrics: dict[str, list] = {}
    with pytest.warns(btl.BTLaplaceWarning, match=r"1 of 3 query texts.*last 64 tokens"):
        got = fn(PROMPTS[2:], completions, log_metric=lambda n, v: metrics.setdefault(n, [v]))
    mean, variance = text_posterior(pad([ids[0], ids[1][-64:], ids[2]], tokenizer.pad_token_id))
    assert got == pytest.approx((mean - variance.sqrt()).tolist(), rel=1e-12)
    assert fn.truncated == 1 and metrics["rewards/bt/truncated"] == [1.0]
    assert (fn.window.length, fn.window.keep) == (64, "end")
    refusing = btl.make_reward_function(
        text_posterior, tokenizer, max_length=8, long_queries="refuse"
    )
    with pytest.raises(ValueError, match=r"item 0 has 15 tokens, more than max_length=8"):
        refusing(PROMPTS[2:], completions)
