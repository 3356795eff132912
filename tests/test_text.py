"""TextPairCollator and text_preference_dataloader: every TRL preference format as exact
tensors, checked against TRL 1.16's own preprocessing and collator; padding, truncation, margins
and error messages. Everything offline: tiny word-level tokenizers built here and MiniLM's."""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import pytest
import torch
from conftest import minilm_tokenizer, tiny_reward_net, word_tokenizer

from bt_laplace.text import TextPairCollator, text_preference_dataloader

trl_reward = pytest.importorskip("trl.trainer.reward_trainer")

# ids of the "llama" word tokenizer: <pad> 1, <s> 2, </s> 3, <|user|> 5, <|assistant|> 6
THE, CAT, SAT, NO, WHAT, COLOR, BLUE, RED = 7, 9, 11, 19, 20, 21, 23, 24
USER = [{"role": "user", "content": "what color"}]
ROWS = {
    "implicit": [{"chosen": "the cat sat", "rejected": "no"}],
    "explicit": [{"prompt": "what color", "chosen": " blue", "rejected": " red"}],
    "conversational-implicit": [
        {
            "chosen": USER + [{"role": "assistant", "content": "blue"}],
            "rejected": USER + [{"role": "assistant", "content": "red"}],
        }
    ],
    "conversational-explicit": [
        {
            "prompt": USER,
            "chosen": [{"role": "assistant", "content": "blue"}],
            "rejected": [{"role": "assistant", "content": "red"}],
        }
    ],
    "tokenized": [{"chosen_ids": [THE, CAT], "rejected_ids": [NO]}],
    "legacy-trl1": [{"chosen_input_ids": [THE, CAT], "rejected_input_ids": [NO]}],
    "legacy-trl0": [{"input_ids_chosen": [THE, CAT], "input_ids_rejected": [NO]}],
}
CHAT = [5, WHAT, COLOR, 3, 6]  # "<|user|> what color </s> <|assistant|>"
#: the expected (input_ids, attention_mask) of each one-row batch, right-padded with <pad> = 1
EXPECTED = {
    "implicit": (
        [[[2, NO, 3, 1, 1], [2, THE, CAT, SAT, 3]]],
        [[[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]],
    ),
    "explicit": (
        [[[2, WHAT, COLOR, RED, 3], [2, WHAT, COLOR, BLUE, 3]]],
        [[[1] * 5, [1] * 5]],
    ),
    "conversational-implicit": ([[CHAT + [RED, 3], CHAT + [BLUE, 3]]], [[[1] * 7, [1] * 7]]),
    "conversational-explicit": ([[CHAT + [RED, 3], CHAT + [BLUE, 3]]], [[[1] * 7, [1] * 7]]),
    "tokenized": ([[[NO, 1], [THE, CAT]]], [[[1, 0], [1, 1]]]),
    "legacy-trl1": ([[[NO, 1], [THE, CAT]]], [[[1, 0], [1, 1]]]),
    "legacy-trl0": ([[[NO, 1], [THE, CAT]]], [[[1, 0], [1, 1]]]),
}
#: rows of several lengths per format, for the comparison with TRL
MANY = {
    "implicit": [
        {"chosen": "the cat sat on the mat", "rejected": "no"},
        {"chosen": "yes", "rejected": "a dog</s>"},  # already ends with eos: not doubled
        {"chosen": "hello world", "rejected": "unknown words here"},
    ],
    "explicit": [
        {"prompt": "what color is the sky", "chosen": " blue", "rejected": " green"},
        {"prompt": "hello", "chosen": " world", "rejected": " i like it very good"},
    ],
    "conversational-explicit": [
        {
            "prompt": [{"role": "user", "content": "what color is the sky"}],
            "chosen": [{"role": "assistant", "content": "blue"}],
            "rejected": [{"role": "assistant", "content": "i like green very good"}],
        },
        {
            "prompt": [{"role": "user", "content": "hello"}],
            "chosen": [{"role": "assistant", "content": "hello world"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        },
    ],
    "conversational-implicit": [
        {
            "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "no"}],
        },
        {
            "chosen": [
                {"role": "user", "content": "the cat"},
                {"role": "assistant", "content": "sat"},
            ],
            "rejected": [{"role": "user", "content": "the cat"}],
        },
    ],
    "tokenized": [
        {"chosen_ids": [7, 8, 9], "rejected_ids": [10]},
        {"chosen_ids": [11], "rejected_ids": [12, 13, 14, 15]},
    ],
}


def trl_batch(rows: list[dict], tokenizer, *, max_length=None, pad_to_multiple_of=None):
    """TRL 1.16's RewardTrainer preprocessing and DataCollatorForPreference on ``rows``."""
    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length)
    data = datasets.Dataset.from_list(rows)
    prepared = trl_reward.RewardTrainer._prepare_dataset(None, data, tokenizer, args, "train")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = trl_reward.DataCollatorForPreference(pad, pad_to_multiple_of=pad_to_multiple_of)
    return prepared, collate([dict(row) for row in prepared])


def as_trl(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (B, 2, L) batch in TRL's layout: (2B, L), the B chosen items, then the B rejected."""
    return {
        k: torch.cat([v[:, 1], v[:, 0]]) if v.ndim == 3 else v.float() for k, v in batch.items()
    }


# ---------------------------------------------------------------------- every format, exactly
@pytest.mark.parametrize("fmt", list(ROWS))
def test_every_trl_format_gives_exact_tensors(fmt: str) -> None:
    batch, labels = TextPairCollator(word_tokenizer("llama"))(ROWS[fmt])
    ids, mask = EXPECTED[fmt]
    assert set(batch) == {"input_ids", "attention_mask"}
    torch.testing.assert_close(batch["input_ids"], torch.tensor(ids), rtol=0, atol=0)
    torch.testing.assert_close(batch["attention_mask"], torch.tensor(mask), rtol=0, atol=0)
    torch.testing.assert_close(labels, torch.tensor([1]))  # item 1 (chosen) preferred


@pytest.mark.parametrize("fmt", list(MANY))
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("multiple", [None, 8], ids=["tight", "multiple-8"])
def test_same_tensors_as_trl_reward_trainer(fmt: str, kind: str, multiple: int | None) -> None:
    tokenizer = word_tokenizer(kind)
    if fmt.startswith("conversational"):
        tokenizer.chat_template = word_tokenizer("llama").chat_template
    rows = [{**row, "margin": 0.25 * i} for i, row in enumerate(MANY[fmt])]
    _, expected = trl_batch(rows, tokenizer, pad_to_multiple_of=multiple)
    collate = TextPairCollator(tokenizer, pad_to_multiple_of=multiple, padding_side="right")
    batch, labels = collate(rows)
    assert set(batch) == {"input_ids", "attention_mask", "margin"}
    for key in expected:
        torch.testing.assert_close(as_trl(batch)[key], expected[key], rtol=0, atol=0)
    assert batch["margin"].dtype == torch.float32 and batch["margin"].shape == (len(rows),)
    torch.testing.assert_close(labels, torch.ones(len(rows), dtype=torch.long))


def test_encode_equals_trl_ids_and_fits_is_trl_length_filter() -> None:
    tokenizer = word_tokenizer("llama")
    rows = MANY["implicit"] + MANY["explicit"]
    rows = [{k: r.get(k, "") for k in ("prompt", "chosen", "rejected")} for r in rows]
    prepared, _ = trl_batch(rows, tokenizer)
    collate = TextPairCollator(tokenizer, max_length=5)
    for row, trl_row in zip(rows, prepared, strict=True):
        assert collate.encode(row) == (trl_row["rejected_ids"], trl_row["chosen_ids"])
    kept, _ = trl_batch(rows, tokenizer, max_length=5)
    filtered = datasets.Dataset.from_list(rows).filter(collate.fits)
    assert [collate.encode(row)[1] for row in filtered] == kept["chosen_ids"]
    assert 0 < len(filtered) < len(rows)


def test_bert_tokenizer_with_eos_set_as_reward_config_does() -> None:
    tokenizer = minilm_tokenizer()
    tokenizer.eos_token = "[SEP]"  # RewardConfig(eos_token="[SEP]"); TRL needs one for text
    rows = [{"chosen": "the cat sat", "rejected": "no"}]
    _, expected = trl_batch(rows, tokenizer)
    batch, _ = TextPairCollator(tokenizer)(rows)
    torch.testing.assert_close(as_trl(batch)["input_ids"], expected["input_ids"], rtol=0, atol=0)
    # [CLS] no [SEP] [SEP], the second [SEP] being the appended eos
    assert batch["input_ids"][0, 0, :4].tolist() == [101, 2053, 102, 102]


# ---------------------------------------------------------------------- padding, truncation
def test_left_padding_moves_the_same_ids_to_the_right_end() -> None:
    rows = ROWS["implicit"] + ROWS["explicit"]
    right, _ = TextPairCollator(word_tokenizer("llama"), padding_side="right")(rows)
    left, _ = TextPairCollator(word_tokenizer("llama"), padding_side="left")(rows)
    assert left["input_ids"][0, 0].tolist() == [1, 1, 2, NO, 3]
    assert left["attention_mask"][0, 0].tolist() == [0, 0, 1, 1, 1]
    for key in right:  # each item's tokens, in order, whatever the side
        for r, lft, m in zip(right[key].flatten(0, 1), left[key].flatten(0, 1),
                             right["attention_mask"].flatten(0, 1), strict=True):  # fmt: skip
            n = int(m.sum())
            assert r[:n].tolist() == lft[-n:].tolist()


def test_padding_side_defaults_to_the_tokenizer() -> None:
    tokenizer = word_tokenizer("llama")
    tokenizer.padding_side = "left"
    batch, _ = TextPairCollator(tokenizer)(ROWS["implicit"])
    assert batch["attention_mask"][0, 0].tolist() == [0, 0, 1, 1, 1]


def test_gpt2_tokenizer_pads_with_eos_like_trl() -> None:
    tokenizer = word_tokenizer("gpt2")  # no pad token
    batch, _ = TextPairCollator(tokenizer)(ROWS["implicit"])
    eos = tokenizer.eos_token_id
    assert batch["input_ids"][0, 0].tolist() == [NO, eos, eos, eos]
    assert batch["attention_mask"][0, 0].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize(
    "side, rejected, chosen",
    [("left", [2, NO, 3], [CAT, SAT, 3]), ("right", [2, NO, 3], [2, THE, CAT])],
    ids=["left", "right"],
)
def test_truncation_cuts_the_side_asked_for(side: str, rejected: list, chosen: list) -> None:
    collate = TextPairCollator(word_tokenizer("llama"), max_length=3, truncation=side)
    batch, _ = collate(ROWS["implicit"])
    assert batch["input_ids"].tolist() == [[rejected, chosen]]
    assert batch["attention_mask"].tolist() == [[[1, 1, 1], [1, 1, 1]]]


def test_rows_over_max_length_are_refused_by_default_never_dropped() -> None:
    collate = TextPairCollator(word_tokenizer("llama"), max_length=4)
    rows = ROWS["tokenized"] + ROWS["implicit"]
    match = r"chosen text of row 1 of the batch has 5 tokens.*max_length=4.*truncation='left'"
    with pytest.raises(ValueError, match=match + r".*dataset.filter\(collator.fits\)"):
        collate(rows)
    batch, _ = TextPairCollator(word_tokenizer("llama"), max_length=5)(rows)
    assert batch["input_ids"].shape == (2, 2, 5)


# ---------------------------------------------------------------------- batches and loaders
def test_a_mapping_of_columns_is_a_batch() -> None:
    rows = MANY["implicit"]
    columns = datasets.Dataset.from_list(rows)[:3]
    collate = TextPairCollator(word_tokenizer("llama"))
    for a, b in zip(collate(columns)[0].values(), collate(rows)[0].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dataloader_over_a_dataset_with_margins() -> None:
    rows = [{**r, "margin": float(i)} for i, r in enumerate(MANY["implicit"])]
    loader = text_preference_dataloader(
        datasets.Dataset.from_list(rows), word_tokenizer("llama"), batch_size=2
    )
    batches = list(loader)
    assert [tuple(b["input_ids"].shape) for b, _ in batches] == [(2, 2, 8), (1, 2, 5)]
    assert [b["margin"].tolist() for b, _ in batches] == [[0.0, 1.0], [2.0]]
    assert [y.tolist() for _, y in batches] == [[1, 1], [1]]
    assert len(loader.dataset) == 3


def test_loader_errors_name_the_row_of_the_dataset() -> None:
    rows = MANY["implicit"] + [{"chosen": "yes", "rejectd": "no"}]
    loader = text_preference_dataloader(rows, word_tokenizer("llama"), batch_size=2)
    with pytest.raises(ValueError, match=r"'rejected' is missing from row 3 of the dataset"):
        list(loader)


def test_loader_fails_up_front_on_a_bad_first_row() -> None:
    with pytest.raises(ValueError, match="'chosen' is missing from row 0 of the dataset"):
        text_preference_dataloader([{"text": "hi"}], word_tokenizer("llama"))
    with pytest.raises(TypeError, match=r"DatasetDict; pick a split: dataset\['train'\]"):
        text_preference_dataloader(
            datasets.DatasetDict({"train": datasets.Dataset.from_list(MANY["implicit"])}),
            word_tokenizer("llama"),
        )
    with pytest.raises(ValueError, match="`dataset` is empty"):
        text_preference_dataloader([], word_tokenizer("llama"))


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "row, error, match",
    [
        ({"text": "hi"}, ValueError, r"Column 'chosen' is missing from row 0 of the batch.*"
         r"columns \['text'\].*chosen_ids"),
        ({"chosen": "yes"}, ValueError, "Column 'rejected' is missing"),
        ({"chosen": "yes", "rejected": 3}, TypeError, r"'rejected' of row 0 .* is int '3'"),
        ({"chosen": USER, "rejected": "no"}, TypeError,
         r"'rejected' of row 0 of the batch is str 'no', but another column holds messages"),
        ({"chosen": [{"role": "user", "content": "a"}, {"text": "b"}], "rejected": USER},
         TypeError, r"Message 1 of column 'chosen' of row 0.*'role' and 'content'"),
        ({"chosen_ids": [1, 2]}, ValueError, r"'rejected_ids' is missing from row 0"),
        ({"chosen_ids": [1, 2.5], "rejected_ids": [3]}, TypeError,
         r"'chosen_ids' of row 0 of the batch must be a non-empty list of token ids"),
        ({"chosen_ids": [], "rejected_ids": [3]}, TypeError, "non-empty list of token ids"),
        (["the cat", "no"], TypeError, r"row 0 of the batch is a list, expected a mapping"),
    ],
    ids=["no-columns", "no-rejected", "not-text", "mixed", "bad-message", "ids-half",
         "float-id", "empty-ids", "not-a-row"],
)  # fmt: skip
def test_bad_rows_are_explained(row, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        TextPairCollator(word_tokenizer("llama"))([row])


def test_margin_must_be_in_every_row_and_finite() -> None:
    collate = TextPairCollator(word_tokenizer("llama"))
    rows = [{**MANY["implicit"][0], "margin": 1.0}, MANY["implicit"][1]]
    with pytest.raises(ValueError, match="'margin' is missing from row 1 of the batch"):
        collate(rows)
    with pytest.raises(ValueError, match=r"'margin' of row 0 of the batch is nan"):
        collate([{**MANY["implicit"][0], "margin": float("nan")}])
    with pytest.raises(ValueError, match=r"'margin' of row 0 of the batch is 'big'"):
        collate([{**MANY["implicit"][0], "margin": "big"}])


def test_tokenizer_problems_are_explained() -> None:
    # no eos is refused only when asked for (the default appends it where the tokenizer has one)
    with pytest.raises(ValueError, match=r"no eos_token.*RewardConfig\(eos_token=.*append_eos"):
        TextPairCollator(minilm_tokenizer(), append_eos="required")(ROWS["implicit"])
    batch, _ = TextPairCollator(minilm_tokenizer(), append_eos=False)(ROWS["implicit"])
    assert batch["input_ids"][0, 0, :3].tolist() == [101, 2053, 102]  # [CLS] no [SEP]
    default, _ = TextPairCollator(minilm_tokenizer())(ROWS["implicit"])
    assert torch.equal(default["input_ids"], batch["input_ids"])  # no eos, nothing appended
    with pytest.raises(ValueError, match=r"no chat template.*chat_template_path"):
        TextPairCollator(word_tokenizer("gpt2"))(ROWS["conversational-explicit"])
    tokenizer = word_tokenizer("gpt2")
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        TextPairCollator(tokenizer)(ROWS["tokenized"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"truncation": "drop"}, ValueError, r"`truncation` must be one of \('error'"),
        ({"max_length": 0}, ValueError, "`max_length` must be a positive int"),
        ({"pad_to_multiple_of": 2.0}, TypeError, "`pad_to_multiple_of` must be an int"),
        ({"padding_side": "top"}, ValueError, "`padding_side` must be 'left' or 'right'"),
        ({"append_eos": 1}, TypeError, "`append_eos` must be a bool"),
    ],
    ids=["truncation", "max_length", "multiple", "side", "append_eos"],
)
def test_bad_options(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        TextPairCollator(word_tokenizer("llama"), **kwargs)


def test_bad_batches_and_tokenizers() -> None:
    collate = TextPairCollator(word_tokenizer("llama"))
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(TypeError, match=r"wrap a single row in a list: collate\(\[row\]\)"):
        collate("the cat")
    with pytest.raises(TypeError, match="to collate a single row, pass"):
        collate({"chosen": "yes", "rejected": "no"})
    with pytest.raises(TypeError, match="`tokenizer` must be a Hugging Face tokenizer"):
        TextPairCollator(str.split)


# ---------------------------------------------------------------------- a real RewardTrainer
TRAIN_ROWS = [
    {"chosen": c, "rejected": r, "margin": m}
    for c, r, m in [
        ("the cat sat on the mat", "no", 0.0),
        ("yes very good", "bad", 0.5),
        ("the sky is blue", "the sky is green", 0.0),
        ("i like it", "what", 1.0),
        ("hello world", "dog", 0.0),
        ("a good answer", "a bad answer", 0.5),
        ("blue", "red red red", 0.0),
    ]
]


@pytest.fixture(scope="module")
def reward_trainer(tmp_path_factory):
    """TRL's RewardTrainer with its defaults (bf16 autocast on CPU, gradient checkpointing),
    3 steps on a tiny GPT-2 and 7 text pairs with margins."""
    from conftest import tiny_reward_net
    from trl import RewardConfig, RewardTrainer

    tokenizer = word_tokenizer("gpt2")  # no pad token: TRL pads with eos and sets pad_token_id
    net = tiny_reward_net("gpt2", tokenizer)
    net.config.pad_token_id = None
    args = RewardConfig(
        str(tmp_path_factory.mktemp("trl")), use_cpu=True, max_steps=3,
        per_device_train_batch_size=4, learning_rate=1e-2, report_to=[], save_strategy="no",
        seed=0,
    )  # fmt: skip
    dataset = datasets.Dataset.from_list(TRAIN_ROWS)
    trainer = RewardTrainer(model=net, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return trainer, dataset


@pytest.mark.slow
def test_reward_trainer_model_to_last_layer_posterior(reward_trainer) -> None:
    import bt_laplace as btl

    trainer, dataset = reward_trainer
    net, tokenizer = trainer.model, trainer.processing_class
    with pytest.raises(ValueError, match=r"mixed-precision wrapper.*unwrap=True"):
        btl.PairwiseRewardModel(net)
    model = btl.PairwiseRewardModel(net, unwrap=True).eval()
    loader = text_preference_dataloader(dataset, tokenizer, batch_size=3)
    # the posterior sees the token ids the trainer trained on ...
    collate = loader.collate_fn
    for row, trained in zip(dataset, trainer.train_dataset, strict=True):
        assert collate.encode(row) == (trained["rejected_ids"], trained["chosen_ids"])
    # ... and scores them as the network does on TRL's own batches (chosen first, then rejected)
    trl_rows = [trainer.train_dataset[i] for i in range(len(dataset))]
    trl_inputs = trainer.data_collator([{k: r[k] for k in ("chosen_ids", "rejected_ids")}
                                        for r in trl_rows])  # fmt: skip
    batch, labels = collate(list(dataset))
    with torch.no_grad():
        theirs = net(**trl_inputs, use_cache=False).logits.squeeze(1)
        ours = model(batch)
    torch.testing.assert_close(torch.cat([ours[:, 1], ours[:, 0]]), theirs)
    assert batch["margin"].tolist() == [r["margin"] for r in TRAIN_ROWS]

    # glue until the fit takes (dict, labels) batches: laplace-torch's dict convention
    pairs = [{**x, "labels": y} for x, y in loader]
    post = btl.fit_reward_posterior(
        model, pairs, subset_of_weights="last_layer", hessian_structure="diag", prior_precision=1.0
    )
    # exact last-layer curvature with TRL's margins: the loss -log sigmoid(f - m) of
    # f = r_chosen - r_rejected has curvature sum_pairs p (1 - p) (phi_1 - phi_0)^2 with
    # p = sigmoid(f - m), phi the pooled feature; and the loss is that sum of -log sigmoid
    weight = net.score.weight
    grads, logit, loss = [], [], 0.0
    for b in range(labels.shape[0]):
        logits = model({k: v[b : b + 1] for k, v in batch.items()})
        f = logits[0, 1] - logits[0, 0]
        (grad,) = torch.autograd.grad(f, weight)
        grads.append(grad.reshape(-1))
        logit.append(f.detach())
        loss -= float(torch.nn.functional.logsigmoid(f - TRAIN_ROWS[b]["margin"]))
    f, d_phi = torch.stack(logit), torch.stack(grads)
    margin = torch.tensor([r["margin"] for r in TRAIN_ROWS])
    p, p_without = torch.sigmoid(f - margin), torch.sigmoid(f)
    exact = ((p * (1 - p))[:, None] * d_phi**2).sum(0)
    torch.testing.assert_close(post.laplace.H, exact, rtol=1e-4, atol=1e-6)
    without = ((p_without * (1 - p_without))[:, None] * d_phi**2).sum(0)
    assert not torch.allclose(post.laplace.H, without, rtol=1e-3)  # the margins count
    assert float(post.laplace.loss) == pytest.approx(loss, rel=1e-5)
    assert post.laplace.n_data == len(dataset)


@pytest.mark.slow
def test_reward_trainer_model_fits_from_the_collator_loader_directly(reward_trainer) -> None:
    import bt_laplace as btl

    trainer, dataset = reward_trainer
    model = btl.PairwiseRewardModel(trainer.model, unwrap=True).eval()
    loader = text_preference_dataloader(dataset, trainer.processing_class, batch_size=3)
    kw = {"subset_of_weights": "last_layer", "hessian_structure": "diag", "prior_precision": 1.0}
    post = btl.fit_reward_posterior(model, loader, **kw)
    glued = btl.fit_reward_posterior(  # the same pairs as one dict per batch (the old glue)
        model, [{**x, "labels": y} for x, y in loader], **kw
    )
    assert post.laplace.n_data == len(dataset)
    torch.testing.assert_close(post.laplace.H, glued.laplace.H, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_posterior_answers_token_dicts(reward_trainer) -> None:
    import bt_laplace as btl

    trainer, dataset = reward_trainer
    model = btl.PairwiseRewardModel(trainer.model, unwrap=True).eval()
    loader = text_preference_dataloader(dataset, trainer.processing_class, batch_size=3)
    pairs = [{**x, "labels": y} for x, y in loader]
    post = btl.fit_reward_posterior(
        model, pairs, subset_of_weights="last_layer", prior_precision=1.0
    )
    batch, _ = next(iter(loader))
    chosen = {
        "input_ids": batch["input_ids"][:, 1],
        "attention_mask": batch["attention_mask"][:, 1],
    }
    mean, variance = post(chosen)
    with torch.no_grad():  # the mean is the model's reward of each text
        torch.testing.assert_close(mean, model(chosen).reshape(-1))
    assert variance.shape == mean.shape and bool((variance > 0).all())
    pairs_p = post.preference_probability(batch)
    assert pairs_p.shape == (batch["input_ids"].shape[0],)
    rel = post.relative_reward(chosen)
    assert rel.mean.shape == mean.shape


@pytest.mark.parametrize("hessian", ["diag", "full"])
def test_lora_adapter_posterior_is_on_the_fast_path_and_exact(hessian) -> None:
    """peft LoRA on a tiny Llama with the base frozen: the posterior over the adapters (and
    the score head peft keeps trainable) runs on layer I/O (lora_A/lora_B are nn.Linear on
    sequences), and its variances equal jacrev Jacobians with laplace-torch's covariance."""
    peft = pytest.importorskip("peft")
    import bt_laplace as btl

    tok = word_tokenizer("llama")
    net = tiny_reward_net("llama", tok).double()
    config = peft.LoraConfig(
        r=2, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="SEQ_CLS"
    )
    model = btl.PairwiseRewardModel(peft.get_peft_model(net, config).eval()).eval()
    texts = ["good answer here", "bad", "a much longer answer with words", "no", "yes", "maybe"]
    rows = [{"chosen": texts[i], "rejected": texts[(i + 1) % 6]} for i in range(6)]
    loader = text_preference_dataloader(rows, tok, batch_size=3)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure=hessian, prior_precision=1.0
    )
    assert post.laplace.backend.layer_io.supported
    enc = tok(texts[:4], padding=True, return_tensors="pt")
    items = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    _, variance = post(items)
    assert post.predictive.structure.recorder.supported
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    jac = torch.func.jacrev(lambda ps: torch.func.functional_call(model, ps, (items,)).reshape(-1))(
        params
    )
    jac = torch.cat([jac[n].reshape(4, -1) for n in names], 1)
    la = post.laplace
    sigma = la.posterior_covariance if hessian == "full" else torch.diag(la.posterior_variance)
    torch.testing.assert_close(variance, ((jac @ sigma) * jac).sum(1), rtol=1e-10, atol=0)


# ---------------------------------------------------------------------- queries on texts
QUERY_ROWS = [
    {"prompt": "what color is the sky", "chosen": " blue", "rejected": " green", "margin": 0.5},
    {"prompt": "hello", "chosen": " world", "rejected": " no", "margin": 0.0},
    {"prompt": "the cat", "chosen": " sat on the mat", "rejected": " is bad", "margin": 1.0},
    {"prompt": "i like it", "chosen": " yes very good", "rejected": " no", "margin": 0.0},
]


@pytest.fixture(scope="module")
def text_posterior():
    """A last-layer posterior of a tiny float64 Llama reward model fitted on text rows."""
    import bt_laplace as btl

    tokenizer = word_tokenizer("llama")
    model = btl.PairwiseRewardModel(tiny_reward_net("llama", tokenizer).double()).eval()
    loader = text_preference_dataloader(QUERY_ROWS, tokenizer, batch_size=3)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", hessian_structure="full",
        prior_precision=1.0,
    )  # fmt: skip
    return post, tokenizer, loader.collate_fn


def test_a_fit_on_texts_answers_texts_as_it_was_trained(text_posterior) -> None:
    post, tokenizer, collate = text_posterior
    assert post.text_collator is collate
    texts = ["the cat sat", "yes very good", "what is the answer"]
    tokens = collate.collate_items(texts)
    for got, want in zip(post(texts), post(tokens), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.no_grad():  # the mean is the model's reward of "<s> text </s>"
        ids = [tokenizer(t + "</s>")["input_ids"] for t in texts]
        alone = [post.model({"input_ids": torch.tensor([i]), "attention_mask":
                             torch.ones(1, len(i), dtype=torch.long)}) for i in ids]  # fmt: skip
    torch.testing.assert_close(post(texts).mean, torch.cat(alone).reshape(-1), rtol=1e-12, atol=0)
    # TRL prompt-completion rows are the prompt's text followed by the answer
    rows = [{"prompt": "the cat", "completion": " sat"}, {"prompt": "yes", "completion": " no"}]
    joined = post(["the cat sat", "yes no"])
    for got, want in zip(post(rows), joined, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_pairs_of_texts_are_the_training_pairs(text_posterior) -> None:
    post, _, collate = text_posterior
    batch, _ = collate(QUERY_ROWS)
    want = post.preference_probability(batch)  # P(chosen preferred), chosen is item 1
    torch.testing.assert_close(post.preference_probability(QUERY_ROWS), want, rtol=0, atol=0)
    as_tuples = [(r["prompt"] + r["rejected"], r["prompt"] + r["chosen"]) for r in QUERY_ROWS]
    torch.testing.assert_close(post.preference_probability(as_tuples), want, rtol=0, atol=0)


def test_conversations_are_rendered_by_the_chat_template(text_posterior) -> None:
    post, tokenizer, _ = text_posterior
    prompt = [{"role": "user", "content": "what color"}]
    answer = [{"role": "assistant", "content": "blue"}]
    rendered = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)
    ids = torch.tensor([rendered["input_ids"]])
    want = post({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    for got in (post([prompt + answer]), post([{"prompt": prompt, "completion": answer}])):
        torch.testing.assert_close(got.mean, want.mean, rtol=0, atol=0)


def test_groups_of_texts_and_best_of_n(text_posterior) -> None:
    import bt_laplace as btl

    post, _, _ = text_posterior
    prompts = ["hello", "hello", "the cat", "the cat", "the cat"]
    answers = [" world", " no", " sat", " is bad", " very good"]
    rows = [{"prompt": p, "completion": c} for p, c in zip(prompts, answers, strict=True)]
    mean, var = post.relative_reward(rows, groups=prompts)
    for members in ([0, 1], [2, 3, 4]):
        m, v = post.relative_reward([rows[i] for i in members])
        torch.testing.assert_close(mean[members], m, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var[members], v, rtol=1e-10, atol=1e-12)
    pick = btl.best_of_n(post, rows, k=1.0, groups=prompts)
    assert pick.groups == ["hello", "the cat"]
    score = mean - var.sqrt()
    assert pick.indices.tolist() == [int(score[:2].argmax()), 2 + int(score[2:].argmax())]


def test_texts_survive_pickle_and_save_load(text_posterior, tmp_path) -> None:
    import pickle

    import bt_laplace as btl

    post, tokenizer, _ = text_posterior
    texts = ["the cat sat", "no"]
    again = pickle.loads(pickle.dumps(post))
    torch.testing.assert_close(again(texts).variance, post(texts).variance, rtol=0, atol=0)
    folder = post.save(tmp_path / "post")
    loaded = btl.load_reward_posterior(folder, post.model, tokenizer=tokenizer)
    assert loaded.text_collator.append_eos and loaded.text_collator.truncation == "error"
    torch.testing.assert_close(loaded(texts).variance, post(texts).variance, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"no tokenizer; call post.set_tokenizer\(tokenizer\)"):
        btl.load_reward_posterior(folder, post.model)(texts)


def test_bad_text_queries_are_explained(text_posterior) -> None:
    post, tokenizer, _ = text_posterior
    with pytest.raises(TypeError, match=r"rows \{'prompt', 'completion'\}; entry 1 is '3'\.$"):
        post(["the cat", 3])
    with pytest.raises(TypeError, match=r"entry 0 is .*pairs go to preference_probability"):
        post([("the cat", "no")])
    with pytest.raises(TypeError, match=r"pairs of texts: TRL preference rows.*got str"):
        post.preference_probability(["the cat", "no"])
    with pytest.raises(ValueError, match=r"Column 'chosen' is missing from row 0"):
        post.preference_probability([{"prompt": "a", "completion": " b"}])
    short = post.__class__.__new__(post.__class__)
    short.__dict__.update(post.__dict__)
    short.set_tokenizer(tokenizer, max_length=3, long_queries="refuse")
    with pytest.raises(ValueError, match=r"text of item 0 has 5 tokens, more than max_length=3"):
        short(["the cat sat"])


def test_margin_needs_the_pair_backend() -> None:
    from laplace.curvature import CurvlinopsGGN

    import bt_laplace as btl

    tokenizer = word_tokenizer("llama")
    model = btl.PairwiseRewardModel(tiny_reward_net("llama", tokenizer).double()).eval()
    loader = text_preference_dataloader(QUERY_ROWS, tokenizer, batch_size=2)
    with pytest.raises(NotImplementedError, match=r"batch 0 has a 'margin' column.*ignore it"):
        btl.fit_reward_posterior(
            model, loader, subset_of_weights="last_layer", hessian_structure="diag",
            prior_precision=1.0, backend=CurvlinopsGGN,
        )  # fmt: skip


def test_centering_loss_is_trls(tmp_path) -> None:
    """The fit's loss with ``center_rewards_coefficient`` is TRL's ``RewardTrainer.compute_loss``
    (its mean over the pairs, margins and the centering term ``c (r_chosen + r_rejected)^2``)
    times the number of pairs, on TRL's own batch of the same rows."""
    from conftest import tiny_reward_net
    from trl import RewardConfig, RewardTrainer

    import bt_laplace as btl

    tokenizer = word_tokenizer("gpt2")
    net = tiny_reward_net("gpt2", tokenizer)
    net.config.pad_token_id = None
    args = RewardConfig(
        str(tmp_path), use_cpu=True, max_steps=1, report_to=[], save_strategy="no", seed=0,
        center_rewards_coefficient=0.1, bf16=False, gradient_checkpointing=False,
    )  # fmt: skip
    dataset = datasets.Dataset.from_list(TRAIN_ROWS)
    trainer = RewardTrainer(model=net, args=args, train_dataset=dataset, processing_class=tokenizer)
    net.eval()
    trl_inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        theirs = trainer.compute_loss(net, trl_inputs)
    model = btl.PairwiseRewardModel(net).eval()
    loader = text_preference_dataloader(dataset, tokenizer, batch_size=3)
    pairs = [{**x, "labels": y} for x, y in loader]
    post = btl.fit_reward_posterior(
        model, pairs, subset_of_weights="last_layer", hessian_structure="diag",
        prior_precision=1.0, center_rewards_coefficient=args.center_rewards_coefficient,
    )  # fmt: skip
    torch.testing.assert_close(
        torch.as_tensor(post.laplace.loss).float(), theirs.float() * len(dataset), rtol=1e-5, atol=0
    )
    plain = btl.fit_reward_posterior(
        model, pairs, subset_of_weights="last_layer", hessian_structure="diag", prior_precision=1.0
    )
    assert abs(float(plain.laplace.loss) / float(theirs * len(dataset)) - 1) > 1e-3
