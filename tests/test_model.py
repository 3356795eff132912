"""PairwiseRewardModel: modes decided from item_ndim, output shapes, and errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bt_laplace import PairwiseRewardModel


class _LogitsNet(nn.Module):
    """Returns an object with `.logits`, like Hugging Face sequence-classification models."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.lin(x))


class _FlatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).squeeze(-1)


@pytest.mark.parametrize(
    "net", [nn.Linear(3, 1), _FlatNet(), _LogitsNet()], ids=["N-1", "N", "logits-attr"]
)
def test_pair_and_item_modes(net: nn.Module) -> None:
    model = PairwiseRewardModel(net)
    x = torch.randn(4, 2, 3)
    logits = model(x)
    assert logits.shape == (4, 2)
    rewards = model(x.reshape(8, 3))
    assert rewards.shape == (8, 1)
    # column i of the pair logits is the reward of item i
    torch.testing.assert_close(logits.reshape(8), rewards.reshape(8))


def test_item_ndim_two_distinguishes_pairs_of_matrices_from_items() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 1))
    model = PairwiseRewardModel(net, item_ndim=2)
    assert model(torch.randn(5, 2, 2, 3)).shape == (5, 2)
    # (5, 2, 3) are five items of shape (2, 3), not pairs: the rank decides, not dim 1
    assert model(torch.randn(5, 2, 3)).shape == (5, 1)


def test_rank_that_fits_neither_mode_is_an_error() -> None:
    model = PairwiseRewardModel(nn.Linear(3, 1))
    with pytest.raises(ValueError, match=r"\(B, 2, \*item\).*got \(8, 3, 3\)"):
        model(torch.randn(8, 3, 3))
    with pytest.raises(ValueError, match="item_ndim=1"):
        model(torch.randn(3))


def test_net_with_several_outputs_is_an_error() -> None:
    model = PairwiseRewardModel(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"one reward per item.*got \(4, 2\)"):
        model(torch.randn(4, 3))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(TypeError, match="`net` must be a torch.nn.Module"):
        PairwiseRewardModel(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`item_ndim` must be a non-negative int"):
        PairwiseRewardModel(nn.Linear(3, 1), item_ndim=-1)
    with pytest.raises(TypeError, match="`x` must be a torch.Tensor"):
        PairwiseRewardModel(nn.Linear(3, 1))([[1.0, 2.0, 3.0]])  # type: ignore[arg-type]


def test_net_returning_non_tensor_is_an_error() -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> list[float]:
            return [0.0] * len(x)

    with pytest.raises(TypeError, match="must return a tensor"):
        PairwiseRewardModel(Bad())(torch.randn(2, 3))


# ---------------------------------------------------------------------- Hugging Face networks
pytest.importorskip("transformers")
FAMILIES = ["bert", "gpt2", "llama"]
LONG, SHORT = "the cat sat on the mat very good", "no"


def _family(kind: str):
    """A tokenizer and a tiny float64 sequence-classification network of family ``kind``."""
    from conftest import minilm_tokenizer, tiny_reward_net, word_tokenizer

    tokenizer = minilm_tokenizer() if kind == "bert" else word_tokenizer(kind)
    return tokenizer, tiny_reward_net(kind, tokenizer).double()


def _alone(net: nn.Module, tokenizer, text: str) -> float:
    """The network's own reward of ``text`` tokenized alone: no padding, no mask needed."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return net(input_ids=ids).logits.item()


def _padded(tokenizer, side: str, multiple: int = 16) -> dict[str, torch.Tensor]:
    """``LONG`` and ``SHORT`` as items (2, L), padded on ``side`` to a multiple of 16."""
    tokenizer.padding_side = side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return dict(
        tokenizer([LONG, SHORT], padding=True, pad_to_multiple_of=multiple, return_tensors="pt")
    )


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_hugging_face_reward_does_not_depend_on_padding(kind: str, side: str) -> None:
    tokenizer, net = _family(kind)
    model = PairwiseRewardModel(net)
    batch = _padded(tokenizer, side)
    with torch.no_grad():
        rewards = model(batch)
        pair = model({k: v.unsqueeze(0) for k, v in batch.items()})  # (1, 2, L): one pair
    alone = [[_alone(net, tokenizer, LONG)], [_alone(net, tokenizer, SHORT)]]
    expected = torch.tensor(alone, dtype=torch.float64)
    torch.testing.assert_close(rewards, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(pair, expected.reshape(1, 2), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "kind, side, mask",
    [("bert", "left", True), ("bert", "right", False), ("gpt2", "left", True)],
    ids=["bert-left", "bert-no-mask", "gpt2-left"],
)
def test_the_raw_network_does_depend_on_padding(kind: str, side: str, mask: bool) -> None:
    """What the wrapper fixes: BERT pools a pad under left padding and reads pads without the
    mask; GPT-2 shifts its absolute positions under left padding."""
    tokenizer, net = _family(kind)
    batch = _padded(tokenizer, side)
    if not mask:
        del batch["attention_mask"]
    with torch.no_grad():
        raw = net(**batch).logits[1].item()
    assert abs(raw - _alone(net, tokenizer, SHORT)) > 0.05


@pytest.mark.parametrize("kind", FAMILIES)
def test_masked_positions_may_hold_any_token(kind: str) -> None:
    """A collator padding with another id than config.pad_token_id (or garbage) changes nothing:
    masked positions are set to the network's pad id before a decoder looks for the last token."""
    tokenizer, net = _family(kind)
    model = PairwiseRewardModel(net)
    batch = _padded(tokenizer, "right")
    garbage = {
        **batch,
        "input_ids": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 9),
    }
    with torch.no_grad():
        torch.testing.assert_close(model(garbage), model(batch), rtol=0, atol=1e-10)


def test_batch_encoding_and_token_type_ids_are_taken() -> None:
    tokenizer, net = _family("bert")
    encoding = tokenizer([LONG, SHORT], padding=True, return_tensors="pt")
    assert "token_type_ids" in encoding and not isinstance(encoding, dict)
    with torch.no_grad():
        rewards = PairwiseRewardModel(net)(encoding)
    assert rewards[1].item() == pytest.approx(_alone(net, tokenizer, SHORT), abs=1e-10)


def test_other_keys_of_a_batch_stay_out_of_the_network() -> None:
    tokenizer, net = _family("llama")
    batch = {k: v.unsqueeze(0) for k, v in _padded(tokenizer, "right").items()}
    extra = {**batch, "margin": torch.ones(1), "labels": torch.ones(1, dtype=torch.long)}
    model = PairwiseRewardModel(net)
    with torch.no_grad():
        torch.testing.assert_close(model(extra), model(batch), rtol=0, atol=0)
    assert model.is_pair_batch(extra) and not model.is_pair_batch(_padded(tokenizer, "right"))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_peft_model_scores_like_its_merged_network(kind: str) -> None:
    peft = pytest.importorskip("peft")
    tokenizer, net = _family(kind)
    targets = ["c_attn"] if kind == "gpt2" else ["q_proj", "v_proj"]
    config = peft.LoraConfig(
        task_type="SEQ_CLS",
        r=2,
        target_modules=targets,
        init_lora_weights=False,
        fan_in_fan_out=kind == "gpt2",  # GPT-2 stores Conv1D weights transposed
    )
    lora = peft.get_peft_model(net, config).double().eval()
    model = PairwiseRewardModel(lora)
    with torch.no_grad():
        rewards = model(_padded(tokenizer, "left"))
        merged = lora.merge_and_unload()
    expected = [_alone(merged, tokenizer, LONG), _alone(merged, tokenizer, SHORT)]
    torch.testing.assert_close(
        rewards.squeeze(1), torch.tensor(expected, dtype=torch.float64), atol=1e-10, rtol=0
    )


def test_generic_network_gets_the_token_dict_as_keywords() -> None:
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.EmbeddingBag(10, 1, mode="sum")

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.emb(input_ids, per_sample_weights=attention_mask.float())

    ids = torch.tensor([[[1, 2, 0], [3, 0, 0]]])
    mask = torch.tensor([[[1, 1, 0], [1, 0, 0]]])
    model = PairwiseRewardModel(Bag())
    w = model.net.emb.weight.squeeze(1)
    torch.testing.assert_close(
        model({"input_ids": ids, "attention_mask": mask}), torch.stack([w[1] + w[2], w[3]])[None]
    )


# ---------------------------------------------------------------------- refused, with the fix
def _token_error(x: dict, error: type, match: str) -> None:
    _, net = _family("llama")
    with pytest.raises(error, match=match):
        PairwiseRewardModel(net)(x)


IDS = torch.tensor([[7, 9, 11]])
ONES = torch.ones(1, 3, dtype=torch.long)


@pytest.mark.parametrize(
    "x, error, match",
    [
        ({"input_ids": IDS}, ValueError, r"no 'attention_mask'.*pads would be read as text"),
        ({"input_ids": IDS, "attention_mask": ONES, "position_ids": ONES}, ValueError,
         r"holds 'position_ids'.*derives positions from the attention mask"),
        ({"input_ids": IDS, "attention_mask": ONES[:, :2]}, ValueError,
         r"`x\['attention_mask'\]` has shape \(1, 2\) but `x\['input_ids'\]` has \(1, 3\)"),
        ({"input_ids": IDS.float(), "attention_mask": ONES}, TypeError,
         r"`x\['input_ids'\]` must hold integers"),
        ({"input_ids": [[7, 9]], "attention_mask": ONES}, TypeError, "return_tensors='pt'"),
        ({"input_ids": IDS.reshape(1, 3, 1), "attention_mask": ONES.reshape(1, 3, 1)},
         ValueError, r"\(B, 2, L\) for pairs or \(B, L\) for items, got \(1, 3, 1\)"),
        ({"input_ids": IDS, "attention_mask": 2 * ONES}, ValueError, "only 0 and 1"),
        ({"input_ids": IDS, "attention_mask": torch.tensor([[1, 0, 1]])}, ValueError,
         r"of item 0 is \[1, 0, 1\]; each item needs one unbroken run of ones"),
        ({"input_ids": IDS, "attention_mask": 0 * ONES}, ValueError, "at least one token"),
    ],
    ids=["no-mask", "position-ids", "shapes", "float-ids", "lists", "pairs-of-3", "mask-2",
         "mask-holes", "empty-item"],
)  # fmt: skip
def test_bad_token_dicts_are_explained(x: dict, error: type, match: str) -> None:
    _token_error(x, error, match)


def test_token_ids_without_a_mask_are_refused_for_hugging_face() -> None:
    _, net = _family("bert")
    with pytest.raises(TypeError, match=r"needs the attention mask.*TextPairCollator"):
        PairwiseRewardModel(net)(torch.tensor([[101, 2053, 102, 0]]))


def test_network_that_would_pool_a_pad_is_refused() -> None:
    tokenizer, net = _family("gpt2")
    net.config.pad_token_id = None
    with pytest.raises(ValueError, match=r"pad_token_id=None.*net.config.pad_token_id = "):
        PairwiseRewardModel(net)


def _autocast_wrapped(net: nn.Module) -> nn.Module:
    """``net`` as accelerate 1.15's ``Accelerator.prepare_model`` leaves it with
    ``mixed_precision="bf16"`` (the same three lines), without creating accelerate's
    process-wide state."""
    from types import MethodType

    from accelerate.utils import convert_outputs_to_fp32

    net._original_forward = net.forward
    autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    net.forward = MethodType(convert_outputs_to_fp32(autocast(net.forward.__func__)), net)
    return net


def test_trainer_leftovers_are_refused_or_unwrapped() -> None:
    pytest.importorskip("accelerate")
    tokenizer, net = _family("llama")
    net = net.float()
    batch = _padded(tokenizer, "right")
    with torch.no_grad():
        expected = PairwiseRewardModel(net)(batch)
    _autocast_wrapped(net)
    net.enable_input_require_grads()
    with torch.no_grad():
        assert (net(**batch).logits - expected).abs().max() > 1e-3  # bf16 arithmetic
    match = r"mixed-precision wrapper.*input-require-grads hook.*unwrap=True"
    with pytest.raises(ValueError, match=match):
        PairwiseRewardModel(net)
    model = PairwiseRewardModel(net, unwrap=True)
    assert "_original_forward" not in net.__dict__ and not net._require_grads_hooks
    with torch.no_grad():
        torch.testing.assert_close(model(batch), expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="`unwrap` must be a bool"):
        PairwiseRewardModel(net, unwrap="yes")  # type: ignore[arg-type]


def test_score_takes_items_only() -> None:
    tokenizer, net = _family("llama")
    batch = _padded(tokenizer, "right")
    model = PairwiseRewardModel(net)
    with torch.no_grad():
        torch.testing.assert_close(model.score(batch), model(batch).squeeze(1), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"`score` takes items.*call the model itself for pairs"):
        model.score({k: v.unsqueeze(0) for k, v in batch.items()})
