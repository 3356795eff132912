"""How the model reads a query text: its token window (positions, the end it keeps) on tiny
BERT, GPT-2 and Llama models; texts over the fit's max_length scored whole at query time, cut
to the window beyond it (warned), refused on request; training pairs unchanged; the special
tokens a tokenizer adds itself."""

from __future__ import annotations

import pytest
import torch
from conftest import minilm_tokenizer, tiny_reward_net, word_tokenizer
from torch import nn

import bt_laplace as btl
from bt_laplace.reading import AddedTokens, TokenWindow, cut_query
from bt_laplace.text import TextOptions, TextPairCollator

ROWS = [
    {"prompt": "what color is the sky", "chosen": " blue", "rejected": " green"},
    {"chosen": "the cat sat on the mat", "rejected": "no"},
    {"chosen": "yes very good", "rejected": "bad"},
]
LONG = " ".join(["the cat sat on the mat"] * 20)  # 120 words: over 64 positions


def tokenizer_of(kind: str):
    return minilm_tokenizer() if kind == "bert" else word_tokenizer(kind)


def posterior_of(kind: str, **text):
    """A float64 tiny reward model of family ``kind`` (64 positions) and a last-layer
    posterior fitted on ROWS, max_length 12."""
    tok = tokenizer_of(kind)
    model = btl.PairwiseRewardModel(tiny_reward_net(kind, tok).double()).eval()
    loader = btl.text_preference_dataloader(ROWS, tok, batch_size=3, max_length=12, **text)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", hessian_structure="full", prior_precision=1.0
    )
    return post, tok


# ---------------------------------------------------------------------- the window
@pytest.mark.parametrize(
    ("kind", "keep"), [("bert", "start"), ("gpt2", "end"), ("llama", "end")], ids=str
)
def test_window_is_the_models_positions_and_the_end_it_reads(kind: str, keep: str) -> None:
    tok = tokenizer_of(kind)
    model = btl.PairwiseRewardModel(tiny_reward_net(kind, tok))
    window = TokenWindow.of(model, tok)
    assert (window.length, window.keep) == (64, keep)
    assert "max_position_embeddings=64" in window.source
    tok.model_max_length = 32  # the smaller known limit wins
    assert TokenWindow.of(model, tok).length == 32
    assert "model_max_length=32" in TokenWindow.of(model, tok).source


def test_window_of_a_network_that_is_not_hugging_face() -> None:
    model = btl.PairwiseRewardModel(nn.Linear(3, 1))
    assert TokenWindow.of(model, None) == TokenWindow(None, "end")
    assert TokenWindow.of(model, word_tokenizer("llama")).length is None  # 1e30: unknown
    assert TokenWindow(None).cut(list(range(100))) == list(range(100))
    with pytest.raises(ValueError, match=r"`keep` must be one of \('end', 'start'\), got 'middle'"):
        TokenWindow(4, "middle")


def test_cut_query_applies_max_length_as_options_say() -> None:
    ids, window = list(range(10)), TokenWindow(6, "end")
    assert cut_query(ids, TextOptions(max_length=4), window, "item 0") == ([4, 5, 6, 7, 8, 9], True)
    assert cut_query(ids, TextOptions(max_length=4, truncation="left"), window, "x") == (
        [6, 7, 8, 9],
        False,
    )
    assert cut_query(ids, TextOptions(max_length=4, truncation="right"), window, "x")[0] == [
        0, 1, 2, 3
    ]  # fmt: skip
    assert cut_query(ids[:5], TextOptions(max_length=4), window, "x") == (ids[:5], False)
    with pytest.raises(ValueError, match=r"item 0 has 10 tokens, more than max_length=4.*"
                       r"long_queries='score'"):  # fmt: skip
        cut_query(ids, TextOptions(max_length=4, long_queries="refuse"), window, "item 0")


# ---------------------------------------------------------------------- queries
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_queries_over_max_length_are_scored_whole(kind: str) -> None:
    post, tok = posterior_of(kind)
    text = "the cat sat on the mat very good yes the cat sat on the mat"  # 15 words > 12
    ids = post.text_collator.encode_item(text)
    assert 12 < len(ids) <= 64
    whole = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=int)}
    torch.testing.assert_close(post([text]).mean, post(whole).mean, rtol=0, atol=0)
    # the fit refuses such a pair, as before (TRL's RewardTrainer drops it)
    with pytest.raises(ValueError, match=r"more than max_length=12"):
        post.text_collator([{"chosen": text, "rejected": "no"}])
    post.set_tokenizer(tok, max_length=12, long_queries="refuse")
    with pytest.raises(ValueError, match=r"text of item 0 has \d+ tokens, more than max_length=12"):
        post([text])


@pytest.mark.parametrize(("kind", "keep"), [("bert", "start"), ("gpt2", "end"), ("llama", "end")])
def test_queries_over_the_models_positions_keep_the_end_it_reads(kind: str, keep: str) -> None:
    post, _ = posterior_of(kind)
    ids = post.text_collator.encode_item(LONG)
    assert len(ids) > 64
    kept = ids[:64] if keep == "start" else ids[-64:]
    cut = {"input_ids": torch.tensor([kept]), "attention_mask": torch.ones(1, 64, dtype=int)}
    side = "first" if keep == "start" else "last"
    match = rf"1 of 2 query texts.*max_position_embeddings=64.*on their {side} 64 tokens"
    with pytest.warns(btl.BTLaplaceWarning, match=match):
        got = post([LONG, "the cat"])
    torch.testing.assert_close(got.mean[0], post(cut).mean[0], rtol=1e-9, atol=1e-12)
    with pytest.warns(btl.BTLaplaceWarning, match=r"2 of 2 query texts"):
        post.preference_probability([{"chosen": LONG, "rejected": LONG + " no"}])


# ---------------------------------------------------------------------- special tokens
@pytest.mark.parametrize(
    ("kind", "prefix", "suffix"),
    [("bert", ("[CLS]",), ("[SEP]",)), ("gpt2", (), ()), ("llama", ("<s>",), ())],
    ids=["bert", "gpt2", "llama"],
)
def test_added_tokens_are_the_ones_the_tokenizer_adds(kind, prefix, suffix) -> None:
    tok = tokenizer_of(kind)
    added = AddedTokens.of(tok)
    assert (added.prefix, added.suffix) == (prefix, suffix)
    plain = "the cat sat"
    decoded = tok.decode(tok(plain)["input_ids"], skip_special_tokens=False)  # as OpenRLHF
    assert tok(added.strip_from(decoded))["input_ids"] == tok(plain)["input_ids"]


def test_strip_takes_one_leading_and_one_trailing_special_token_only() -> None:
    bert = AddedTokens(("[CLS]",), ("[SEP]",))
    assert bert.strip_from("[CLS] [CLS] a [SEP] [SEP]") == " [CLS] a [SEP] "
    assert bert.strip_from("a [CLS]") == "a [CLS]" and bert.strip_from("") == ""
    two = AddedTokens(("<s>", "<x>"), ())
    assert two.strip_from("<s> <x>a") == "a" and two.strip_from("<s>a") == "<s>a"


def test_a_tokenizer_without_eos_gets_none_by_default() -> None:
    tok = minilm_tokenizer()
    assert tok.eos_token is None
    ids = TextPairCollator(tok).encode_item("the cat")
    assert ids == tok("the cat")["input_ids"]  # [CLS] the cat [SEP], nothing appended
    with pytest.raises(ValueError, match=r"no eos_token"):
        TextPairCollator(tok, append_eos="required").encode_item("the cat")
    with pytest.raises(
        ValueError, match=r"`append_eos` must be True, False or 'required', got 'always'"
    ):
        TextOptions(append_eos="always")
