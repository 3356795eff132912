"""Tiny fitted posteriors for examples and doctests, each written once.

Shape legend: ``B`` pairs, ``2`` the two items of a pair.

- :func:`tiny_posterior`: a ``3 -> 8 -> 1`` tanh MLP (:func:`tiny_model`) fitted on 16 random
  pairs of 3-feature items (:func:`tiny_loader`): the posterior the doctests of
  :mod:`bt_laplace.rlhf` and :mod:`bt_laplace.labeling` query.
- :func:`tiny_text_posterior`: a one-layer GPT-2 on a six-word vocabulary
  (:func:`tiny_tokenizer`), fitted on four text pairs, with the tokenizer kept: the posterior of
  the text doctests (needs ``transformers`` and ``tokenizers``, the ``hf`` extra).

Each seeds its own draws from ``seed`` and leaves torch's global generator as it was.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bt_laplace.data import preference_dataloader
from bt_laplace.fit import fit_reward_posterior
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.posterior import RewardPosterior
from bt_laplace.text import text_preference_dataloader

__all__ = [
    "tiny_model",
    "tiny_loader",
    "tiny_posterior",
    "tiny_tokenizer",
    "tiny_text_posterior",
]

#: features of an item of :func:`tiny_model`
TINY_FEATURES = 3


def tiny_model(seed: int = 0) -> PairwiseRewardModel:
    """The pair model of a ``3 -> 8 -> 1`` tanh MLP, initialized from ``seed``.

    Example:
        >>> tiny_model()(torch.zeros(2, 2, 3)).shape
        torch.Size([2, 2])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(TINY_FEATURES, 8), nn.Tanh(), nn.Linear(8, 1))
    return PairwiseRewardModel(net)


def tiny_loader(seed: int = 0, *, n_pairs: int = 16, batch_size: int = 32) -> DataLoader:
    """Batches ``(x (B, 2, 3), y (B,))`` of ``n_pairs`` standard-normal pairs, labels
    alternating 0, 1, drawn from ``seed``.

    Example:
        >>> x, y = next(iter(tiny_loader(batch_size=4)))
        >>> x.shape, y.tolist()
        (torch.Size([4, 2, 3]), [0, 1, 0, 1])
    """
    g = torch.Generator().manual_seed(seed)
    rows = [
        {
            "x0": torch.randn(TINY_FEATURES, generator=g),
            "x1": torch.randn(TINY_FEATURES, generator=g),
            "label": i % 2,
        }
        for i in range(n_pairs)
    ]
    return preference_dataloader(rows, batch_size=batch_size)


def tiny_posterior(seed: int = 0, **fit_kwargs: Any) -> RewardPosterior:
    """:func:`~bt_laplace.fit_reward_posterior` of :func:`tiny_model` on :func:`tiny_loader`.

    Args:
        seed: Seed of the weights, the pairs and the fit's own draws.
        **fit_kwargs: Options of :func:`~bt_laplace.fit_reward_posterior` (default: its
            defaults).

    Returns:
        The fitted posterior; its items are ``(B, 3)`` float32 tensors.

    Example:
        >>> post = tiny_posterior(hessian_structure="diag")
        >>> post(torch.zeros(4, 3)).mean.shape
        torch.Size([4])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fit_reward_posterior(tiny_model(seed), tiny_loader(seed), **fit_kwargs)


def tiny_tokenizer() -> Any:
    """A whitespace word-level ``PreTrainedTokenizerFast`` over ``<pad> </s> the cat sat
    <unk>`` (ids 0 to 5), with pad and eos tokens.

    Example:
        >>> tiny_tokenizer()("the cat")["input_ids"]
        [2, 3]
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "the": 2, "cat": 3, "sat": 4, "<unk>": 5}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>")


def tiny_text_posterior(seed: int = 0, **fit_kwargs: Any) -> RewardPosterior:
    """A one-layer GPT-2 (``n_embd=8``) reward model on :func:`tiny_tokenizer`, fitted on four
    copies of the pair "the " + "cat sat" over "the " + "sat"; the fit keeps the tokenizer.

    Args:
        seed: Seed of the weights and the fit's own draws.
        **fit_kwargs: Options of :func:`~bt_laplace.fit_reward_posterior` (default:
            ``subset_of_weights="last_layer", prior_precision=1.0``).

    Returns:
        The fitted posterior, in eval mode; it scores texts.

    Example:
        >>> post = tiny_text_posterior()
        >>> post(["the cat", "the sat"]).mean.shape
        torch.Size([2])
    """
    import transformers

    tok = tiny_tokenizer()
    rows = [{"prompt": "the ", "chosen": "cat sat", "rejected": "sat"}] * 4
    options = {"subset_of_weights": "last_layer", "prior_precision": 1.0, **fit_kwargs}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = transformers.GPT2Config(  # type: ignore[call-arg]  # num_labels: **kwargs
            vocab_size=6, n_embd=8, n_layer=1, n_head=2, num_labels=1, pad_token_id=0
        )
        net = transformers.GPT2ForSequenceClassification(config)
        model = PairwiseRewardModel(net).eval()
        return fit_reward_posterior(model, text_preference_dataloader(rows, tok), **options)
