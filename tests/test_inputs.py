"""bt_laplace.inputs: the one rule for conversations, every query input kind read by
QueryReader, the prompts/completions check, and TextOptions; each error with its message."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import word_tokenizer
from torch import nn

from bt_laplace import PairwiseRewardModel, TextPairCollator
from bt_laplace.inputs import (
    QueryReader,
    check_texts,
    is_conversation,
    is_text,
    split_rows,
    take_rows,
)
from bt_laplace.text import TextOptions

MESSAGE = {"role": "user", "content": "what color"}
ANSWER = {"role": "assistant", "content": "blue"}


# ---------------------------------------------------------------------- the one rule
@pytest.mark.parametrize(
    "value, expected",
    [
        ([MESSAGE], True),
        ([MESSAGE, ANSWER], True),
        ([{"role": "user", "content": "", "name": "x"}], True),
        ([], False),
        ([{"role": "user"}], False),
        ([{"content": "hi"}], False),
        ([MESSAGE, {"text": "b"}], False),
        ([MESSAGE, "hi"], False),
        ((MESSAGE,), False),
        (MESSAGE, False),
        ([1, 2], False),
        (None, False),
    ],
    ids=[
        "one", "two", "extra-key", "empty", "no-content", "no-role", "one-bad", "a-string",
        "tuple", "a-message", "ids", "none",
    ],
)  # fmt: skip
def test_a_conversation_is_a_non_empty_list_of_role_content_messages(value, expected) -> None:
    assert is_conversation(value) is expected
    assert is_text(value) is expected


def test_a_text_is_a_string_or_a_conversation() -> None:
    assert is_text("") and is_text("the cat") and is_text([ANSWER])
    assert not is_text(b"bytes") and not is_text(3) and not is_text({"completion": "x"})


# ---------------------------------------------------------------------- prompts, completions
def test_check_texts_gives_lists() -> None:
    completions, prompts = check_texts(("a", [ANSWER]), ("q", None))
    assert completions == ["a", [ANSWER]] and prompts == ["q", None]
    assert check_texts(["a"]) == (["a"], None)
    assert check_texts([], []) == ([], [])


@pytest.mark.parametrize(
    "completions, prompts, kwargs, error, match",
    [
        ("blue", None, {}, TypeError, r"`completions` must be a list .* got str; wrap"),
        (["blue"], "hi", {}, TypeError, r"`prompts` must be a list .* got str"),
        (["blue"], None, {"need_prompts": True}, TypeError, r"`prompts` must be a list.*NoneType"),
        (["a", "b"], ["q"], {}, ValueError, r"`prompts` has 1 entries but `completions` 2"),
        (["a", 3], None, {}, TypeError, r"`completions` must hold texts.*entry 1 is int '3'\.$"),
        ([[20, 21]], None, {}, TypeError, r"entry 0 is list .*completion_ids.*decode"),
        ([[{"content": "x"}]], None, {}, TypeError, r"entry 0 is list .\[\{'content'"),
        (["a"], [["hi"]], {}, TypeError, r"`prompts` must hold texts.*or None; entry 0 is list"),
    ],
    ids=["str", "str-prompts", "no-prompts", "lengths", "number", "ids", "no-role", "prompt"],
)  # fmt: skip
def test_check_texts_errors(completions, prompts, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        check_texts(completions, prompts, **kwargs)


# ---------------------------------------------------------------------- tensors, token dicts
@pytest.fixture
def reader() -> QueryReader:
    model = PairwiseRewardModel(nn.Linear(3, 1))
    return QueryReader(model, torch.float32, torch.device("cpu"), item_shape=(3,))


def test_tensors_are_items_or_pairs(reader) -> None:
    x = torch.randn(4, 3)
    assert reader.items(x) is x
    assert reader.pairs(torch.randn(4, 2, 3)).shape == (4, 2, 3)
    with torch.inference_mode():
        frozen = torch.randn(4, 3)
    assert not reader.items(frozen).is_inference()  # copied, so autograd can use it
    assert reader.items(torch.randn(4, 5), check_shape=False).shape == (4, 5)


@pytest.mark.parametrize(
    "method, x, error, match",
    [
        ("items", [[0.0] * 3], TypeError, r"`x` must be a torch.Tensor, got list"),
        ("items", torch.randn(4, 2, 3), ValueError, r"`x` must be items .* got pairs \(4, 2, 3\)"),
        ("pairs", torch.randn(4, 3), ValueError, r"`x` must be pairs of shape .* got \(4, 3\)"),
        ("items", torch.randn(4, 3).double(), ValueError, r"`x` has dtype torch.float64"),
        ("items", torch.tensor([[0.0, 1.0, float("nan")]]), ValueError,
         r"`x` holds NaN or infinite values \(rows \[0\]\)"),
        ("items", torch.randn(4, 5), ValueError, r"items of shape \(5,\), but .* \(3,\)"),
        ("pairs", torch.randn(4, 2, 5), ValueError, r"items of shape \(5,\), but .* \(3,\)"),
        ("items", {"input_ids": [[1, 2]], "attention_mask": [[1, 1]]}, TypeError,
         r"`x` is a token dict, but \['input_ids', 'attention_mask'\] are not tensors"),
    ],
    ids=["list", "pairs-as-items", "items-as-pairs", "dtype", "nan", "item-shape",
         "pair-item-shape", "token-lists"],
)  # fmt: skip
def test_tensor_and_token_dict_errors(reader, method, x, error, match) -> None:
    with pytest.raises(error, match=match):
        getattr(reader, method)(x)


def test_finite_items_whose_sum_overflows_are_accepted(reader) -> None:
    """The finiteness check sums first (one reduction); a sum that overflows, of finite
    values, falls back to the elementwise check rather than refusing them."""
    huge = torch.full((4, 3), 3e38)
    assert not torch.isfinite(huge.sum())
    assert reader.items(huge) is huge
    for bad, row in ((float("inf"), 2), (float("-inf"), 1), (float("nan"), 3)):
        x = huge.clone()
        x[row, 1] = bad
        with pytest.raises(
            ValueError, match=rf"`x` holds NaN or infinite values \(rows \[{row}\]\)"
        ):
            reader.items(x)


def test_token_dicts_are_items_or_pairs(reader) -> None:
    items = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
    }
    pairs = {k: v.unsqueeze(1).expand(2, 2, 4) for k, v in items.items()}
    assert reader.items(items)["input_ids"].shape == (2, 4)
    assert reader.pairs(pairs)["input_ids"].shape == (2, 2, 4)
    with pytest.raises(ValueError, match=r"`x` must be items, input_ids \(B, L\), got pairs"):
        reader.items(pairs)
    with pytest.raises(ValueError, match=r"`x` must be pairs, input_ids \(B, 2, L\), got \(2, 4\)"):
        reader.pairs(items)


def test_references_are_read_like_the_items(reader) -> None:
    x = reader.items(torch.randn(4, 3))
    assert reader.references(torch.randn(2, 3), x).shape == (2, 3)
    with pytest.raises(ValueError, match="`reference` has no items"):
        reader.references(torch.randn(0, 3), x)
    with pytest.raises(ValueError, match=r"`reference` items have shape \(5,\) but `x` .* \(3,\)"):
        reader.references(torch.randn(2, 5), x)
    tokens = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
    }
    with pytest.raises(TypeError, match="`reference` and `x` must both be tensors or both token"):
        reader.references(tokens, x)


def test_rows_split_and_taken_alike_for_tensors_and_token_dicts() -> None:
    x = torch.arange(10).reshape(5, 2)
    tokens = {"input_ids": x, "attention_mask": x}
    assert [t.shape[0] for t in split_rows(x, 2)] == [2, 2, 1]
    assert [t["input_ids"].shape[0] for t in split_rows(tokens, 2)] == [2, 2, 1]
    assert split_rows(x, 5)[0] is x
    rows = torch.tensor([4, 0])
    assert take_rows(x, rows).tolist() == [[8, 9], [0, 1]]
    assert take_rows(tokens, rows)["attention_mask"].tolist() == [[8, 9], [0, 1]]


# ---------------------------------------------------------------------- texts
@pytest.fixture(scope="module")
def collator() -> TextPairCollator:
    return TextPairCollator(word_tokenizer("llama"))


@pytest.fixture
def text_reader(reader, collator) -> QueryReader:
    return dataclasses.replace(reader, item_shape=None, text_collator=collator)


def test_every_text_kind_is_read_as_the_collator_prepares_it(text_reader, collator) -> None:
    read = text_reader.tokens
    same = torch.testing.assert_close
    same(read(["the cat"], "x", pairs=False), collator.collate_items(["the cat"]))
    same(read([[MESSAGE, ANSWER]], "x", pairs=False), collator.collate_items([[MESSAGE, ANSWER]]))
    rows = [{"prompt": "what color", "completion": " blue"}, {"completion": "red"}]
    same(
        read(rows, "x", pairs=False),
        collator.collate_items([" blue", "red"], ["what color", None]),
    )
    pair = {"prompt": "what color", "chosen": " blue", "rejected": " red"}
    tokens, _ = collator([pair])
    same(read([pair], "x", pairs=True), tokens)
    same(read([("the cat", "no")], "x", pairs=True), collator([{"rejected": "the cat",
                                                                 "chosen": "no"}])[0])  # fmt: skip
    with_margin = read([{**pair, "margin": 1.0}], "x", pairs=True)
    assert "margin" not in with_margin


def test_texts_go_through_items_and_pairs(text_reader) -> None:
    assert text_reader.items(["the cat", "no"])["input_ids"].shape[0] == 2
    assert text_reader.items([[MESSAGE]])["input_ids"].ndim == 2
    assert text_reader.pairs([("the cat", "no")])["input_ids"].shape[:2] == (1, 2)


@pytest.mark.parametrize(
    "method, x, error, match",
    [
        ("items", ["the cat", 3], TypeError,
         r"`x` must be items: strings, message lists or TRL prompt-completion rows "
         r"\{'prompt', 'completion'\}; entry 1 is '3'\.$"),
        ("items", [("the cat", "no")], TypeError, r"entry 0 .*pairs go to preference_probability"),
        ("items", [[{"role": "user"}]], TypeError, r"`x` must be items.*entry 0 is"),
        ("pairs", ["the cat", "no"], TypeError, r"`x` must be pairs of texts: TRL preference rows.*"
         r"got str"),
        ("pairs", [{"prompt": "a", "completion": " b"}], ValueError,
         r"Column 'chosen' is missing from row 0"),
    ],
    ids=["number", "tuple-as-item", "bad-conversation", "strings-as-pairs", "item-row-as-pair"],
)  # fmt: skip
def test_text_errors(text_reader, method, x, error, match) -> None:
    with pytest.raises(error, match=match):
        getattr(text_reader, method)(x)


def test_texts_need_a_tokenizer(reader) -> None:
    with pytest.raises(TypeError, match=r"`x` is a list of texts, but the posterior has no token"):
        reader.items(["the cat"])
    with pytest.raises(TypeError, match=r"`reference` is a list of texts.*set_tokenizer"):
        reader.items(["the cat"], "reference")


# ---------------------------------------------------------------------- text options
def test_text_options_are_one_value() -> None:
    options = TextOptions(max_length=8, truncation="left")
    assert options.truncation == "left" and options.changed() == ["max_length", "truncation"]
    assert repr(options) == "TextOptions(max_length=8, truncation='left', append_eos=True)"
    assert TextOptions.of(max_length=8, truncation="left") == options
    assert TextOptions.of(options) is options and TextOptions.of() == TextOptions()
    collate = TextPairCollator(word_tokenizer("llama"), options=options)
    assert collate.options is options
    assert (collate.max_length, collate.truncation, collate.append_eos) == (8, "left", True)
    old = TextPairCollator(word_tokenizer("llama"), max_length=8, truncation="left")
    assert old.options == options
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_length = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: TextOptions(truncation="drop"), ValueError, r"`truncation` must be one of"),
        (lambda: TextOptions(max_length=0), ValueError, r"`max_length` must be a positive int"),
        (lambda: TextOptions(append_eos=1), TypeError, r"`append_eos` must be a bool"),
        (lambda: TextOptions.of({"max_length": 8}), TypeError,
         r"`options` must be a bt_laplace.TextOptions, got dict"),
        (lambda: TextOptions.of(TextOptions(), max_length=8), ValueError,
         r"either as `options` or as keywords, not both.*\['max_length'\]"),
    ],
    ids=["truncation", "max_length", "append_eos", "not-options", "both"],
)  # fmt: skip
def test_text_option_errors(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()
