"""The pair wrapper: one reward network, two modes of input.

Shape legend: ``B`` pairs or items, ``2`` the two items of a pair (index 0 first, index 1
second), ``*item`` the shape of one item (``item_ndim`` dimensions), ``L`` sequence length.

A Bradley-Terry reward model scores one item, ``r(x)``, and is trained on pairs with

.. math:: P(\\text{item 1} \\succ \\text{item 0}) = \\sigma(r(x_1) - r(x_0)).

:class:`PairwiseRewardModel` makes any single-item network speak both languages that
laplace-torch's ``likelihood="reward_modeling"`` expects: pairs ``(B, 2, *item)`` give logits
``(B, 2)`` whose softmax is the Bradley-Terry probability, items ``(B, *item)`` give rewards
``(B, 1)``. Token batches are dicts (or a ``transformers.BatchEncoding``) holding
``input_ids`` and ``attention_mask``, ``(B, 2, L)`` for pairs or ``(B, L)`` for items, as
:class:`~bt_laplace.text.TextPairCollator` makes them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from bt_laplace._checks import check_tensor

__all__ = ["PairwiseRewardModel"]

#: keys of a token batch that go to the network, each ``(B, 2, L)`` or ``(B, L)``
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
#: keys refused: the wrapper derives positions from the attention mask itself
_REFUSED_KEYS = ("position_ids", "inputs_embeds")


def is_hugging_face(net: nn.Module) -> bool:
    """True for a ``transformers.PreTrainedModel`` or a ``peft.PeftModel`` (neither imported
    here: a network of theirs exists only once they are)."""
    transformers, peft = sys.modules.get("transformers"), sys.modules.get("peft")
    return (transformers is not None and isinstance(net, transformers.PreTrainedModel)) or (
        peft is not None and isinstance(net, peft.PeftModel)
    )


def _text_config(net: nn.Module) -> Any:
    config: Any = getattr(net, "config")  # noqa: B009 (an nn.Module attribute, typed Any)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _trainer_leftovers(net: nn.Module) -> list[str]:
    """What a ``transformers``/TRL Trainer leaves on a model that a posterior must not see."""
    found = []
    if "_original_forward" in net.__dict__:
        found.append(
            "accelerate's mixed-precision wrapper on `forward` (autocast: the posterior would "
            "be fitted to bf16/fp16 arithmetic, and the curvature mixes dtypes)"
        )
    if any(m.__dict__.get("_require_grads_hooks") for m in net.modules()):
        found.append(
            "the input-require-grads hook of gradient checkpointing (enable_input_require_grads)"
        )
    return found


def _unwrap_trained(net: nn.Module) -> None:
    """Remove, in place, what :func:`_trainer_leftovers` finds (accelerate's own unwrapping)."""
    if "_original_forward" in net.__dict__:
        from accelerate.utils import extract_model_from_parallel

        extract_model_from_parallel(net, keep_fp32_wrapper=False)
    for m in net.modules():
        if m.__dict__.get("_require_grads_hooks"):
            m.disable_input_require_grads()  # type: ignore[operator]


class PairwiseRewardModel(nn.Module):
    """Wrap a single-item reward network so it also scores pairs.

    The mode is decided from the known item rank, never guessed: an input with
    ``item_ndim + 2`` dimensions and size 2 on dim 1 is a batch of pairs, one with
    ``item_ndim + 1`` dimensions is a batch of items, and anything else is an error. A token
    dict is pairs when its ``input_ids`` are ``(B, 2, L)`` and items when they are ``(B, L)``.

    Token dicts go to ``net`` as keyword arguments (``input_ids``, ``attention_mask``, and
    ``token_type_ids`` if present; other keys such as ``labels`` or ``margin`` are batch data,
    not inputs, and stay out). For a Hugging Face network the reward does not depend on how a
    text was padded: every item is moved to the right of its row (so positions count from its
    first token, and an encoder's first-token pooling sees ``[CLS]``, not a pad), and masked
    positions hold ``net.config.pad_token_id`` (so a decoder's pooling of the last non-pad
    token finds the text's last token). That needs ``pad_token_id`` set on the config, as
    TRL's ``RewardTrainer`` does; a network without one is refused. Token ids as a plain
    tensor are refused for a Hugging Face network, which would read the pads as text.

    Args:
        net: Any module that maps items ``(N, *item)`` to rewards ``(N,)``, ``(N, 1)``, or an
            object with a ``.logits`` attribute of one of those shapes (Hugging Face style):
            e.g. a ``transformers`` ``AutoModelForSequenceClassification`` with ``num_labels=1``,
            or a ``peft`` model around one.
        item_ndim: Number of dimensions of one item: 1 for feature vectors ``(D,)`` or token
            ids ``(L,)``, 3 for images ``(C, H, W)``. Keyword-only.
        unwrap: Remove, in place, what training with a ``transformers``/TRL Trainer leaves on
            ``net``: accelerate's mixed-precision ``forward`` wrapper and the input-require-
            grads hook. Without it such a network is refused. Keyword-only.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = PairwiseRewardModel(nn.Linear(3, 1))
        >>> model(torch.randn(4, 2, 3)).shape  # pairs -> logits
        torch.Size([4, 2])
        >>> model(torch.randn(5, 3)).shape  # items -> rewards
        torch.Size([5, 1])
    """

    def __init__(self, net: nn.Module, *, item_ndim: int = 1, unwrap: bool = False) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"`net` must be a torch.nn.Module, got {type(net).__name__}.")
        if isinstance(item_ndim, bool) or not isinstance(item_ndim, int) or item_ndim < 0:
            raise ValueError(f"`item_ndim` must be a non-negative int, got {item_ndim!r}.")
        if not isinstance(unwrap, bool):
            raise TypeError(f"`unwrap` must be a bool, got {type(unwrap).__name__}.")
        self.hugging_face = is_hugging_face(net)
        if self.hugging_face:
            if unwrap:
                _unwrap_trained(net)
            leftovers = _trainer_leftovers(net)
            if leftovers:
                raise ValueError(
                    f"`net` still carries what training left on it: {'; '.join(leftovers)}. "
                    "Pass PairwiseRewardModel(net, unwrap=True) to remove them in place (the "
                    "network then runs in its own dtype; train it further without them), or "
                    "yourself: net = trainer.accelerator.unwrap_model(net, "
                    "keep_fp32_wrapper=False); net.disable_input_require_grads()."
                )
            pad = getattr(_text_config(net), "pad_token_id", None)
            if pad is None:
                raise ValueError(
                    f"`net` ({type(net).__name__}) has config.pad_token_id=None, so it cannot "
                    "tell pads from text and pools the last position, a pad under padding; set "
                    "net.config.pad_token_id = tokenizer.pad_token_id (as TRL's RewardTrainer "
                    "does), or the eos id if the tokenizer has no pad token."
                )
        self.net = net
        self.item_ndim = item_ndim

    def is_pair_batch(self, x: torch.Tensor | Mapping[str, Any]) -> bool:
        """Return True for pairs ``(B, 2, *item)``, False for items ``(B, *item)``; for a token
        dict, True for ``input_ids`` ``(B, 2, L)``, False for ``(B, L)``.

        Raises:
            ValueError: If ``x`` fits neither mode.
        """
        if isinstance(x, Mapping):
            return self._check_tokens(x)["input_ids"].ndim == 3
        check_tensor("x", x)
        if x.ndim == self.item_ndim + 2 and x.shape[1] == 2:
            return True
        if x.ndim == self.item_ndim + 1:
            return False
        raise ValueError(
            f"`x` must have shape (B, 2, *item) for pairs or (B, *item) for items with "
            f"{self.item_ndim}-dimensional items (item_ndim={self.item_ndim}), got "
            f"{tuple(x.shape)}; stack the two items of a pair on dim 1, or set `item_ndim` "
            "to the number of dimensions of one item."
        )

    def score(self, items: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Score flat items ``(N, *item)``, or a token dict of ``(N, L)``, and return rewards
        ``(N,)``."""
        if isinstance(items, Mapping):
            tokens = self._check_tokens(items)
            if tokens["input_ids"].ndim != 2:
                raise ValueError(
                    "`score` takes items: a token dict of (N, L), got input_ids "
                    f"{tuple(tokens['input_ids'].shape)}; call the model itself for pairs."
                )
            return self._score_tokens(tokens)
        if self.hugging_face:
            raise TypeError(
                f"`x` is a {tuple(items.shape)} tensor, but a Hugging Face network needs "
                "the attention mask, or it reads the pads as text; pass a dict "
                "{'input_ids': ..., 'attention_mask': ...} (the tokenizer's output, or "
                "bt_laplace.TextPairCollator's batches)."
            )
        return self._rewards(self.net(items), items.shape[0])

    def _score_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rewards ``(N,)`` of checked token items ``(N, L)``."""
        out = self.net(**self._network_inputs(tokens))
        return self._rewards(out, tokens["input_ids"].shape[0])

    @staticmethod
    def _rewards(out: Any, n: int) -> torch.Tensor:
        """The network's output as rewards ``(N,)``."""
        if not isinstance(out, torch.Tensor) and hasattr(out, "logits"):
            out = out.logits
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"`net` must return a tensor or an object with `.logits`, got {type(out).__name__}."
            )
        if out.shape == (n,):
            return out
        if out.shape == (n, 1):
            return out.squeeze(1)
        raise ValueError(
            f"`net` must return one reward per item, shape ({n},) or ({n}, 1), got "
            f"{tuple(out.shape)}; a reward model has a single output."
        )

    def forward(self, x: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Score pairs or items.

        Args:
            x: Pairs ``(B, 2, *item)`` or items ``(B, *item)``; or a token dict with
                ``input_ids`` and ``attention_mask`` of ``(B, 2, L)`` (pairs) or ``(B, L)``
                (items).

        Returns:
            Logits ``(B, 2)`` for pairs (``[:, 1] - [:, 0]`` is the Bradley-Terry logit of
            item 1 over item 0) or rewards ``(B, 1)`` for items.
        """
        if isinstance(x, Mapping):
            tokens = self._check_tokens(x)
            if tokens["input_ids"].ndim == 3:
                b = tokens["input_ids"].shape[0]
                flat = {k: v.flatten(0, 1) for k, v in tokens.items()}
                return self._score_tokens(flat).reshape(b, 2)
            return self._score_tokens(tokens).unsqueeze(1)
        if self.is_pair_batch(x):
            b = x.shape[0]
            return self.score(x.reshape(2 * b, *x.shape[2:])).reshape(b, 2)
        return self.score(x).unsqueeze(1)

    # ------------------------------------------------------------------ token dicts
    def _check_tokens(self, x: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The network's keys of a token dict, checked: ids and mask of one shape, ``(B, 2, L)``
        or ``(B, L)``, the mask 0/1 with one block of ones per item."""
        for key in _REFUSED_KEYS:
            if key in x:
                raise ValueError(
                    f"`x` holds {key!r}; PairwiseRewardModel takes token ids and derives "
                    f"positions from the attention mask itself. Drop {key!r} from the batch."
                )
        for key in ("input_ids", "attention_mask"):
            if key not in x:
                raise ValueError(
                    f"The token dict `x` has no {key!r} (keys: {sorted(x)}); pass both "
                    "input_ids and attention_mask, as the tokenizer returns them (without the "
                    "mask, the pads would be read as text)."
                )
        tokens = {k: x[k] for k in TOKEN_KEYS if k in x}
        ids = tokens["input_ids"]
        for key, value in tokens.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"`x[{key!r}]` must be a torch.Tensor, got {type(value).__name__}; "
                    "tokenize with return_tensors='pt', or use bt_laplace.TextPairCollator."
                )
            if value.dtype.is_floating_point or value.dtype.is_complex:
                raise TypeError(f"`x[{key!r}]` must hold integers, got dtype {value.dtype}.")
            if value.shape != ids.shape:
                raise ValueError(
                    f"`x[{key!r}]` has shape {tuple(value.shape)} but `x['input_ids']` has "
                    f"{tuple(ids.shape)}; every token tensor needs the same shape."
                )
        if not (ids.ndim == 2 or (ids.ndim == 3 and ids.shape[1] == 2)) or ids.shape[-1] == 0:
            raise ValueError(
                f"`x['input_ids']` must have shape (B, 2, L) for pairs or (B, L) for items, got "
                f"{tuple(ids.shape)}; stack the two items of each pair on dim 1."
            )
        mask = tokens["attention_mask"].reshape(-1, ids.shape[-1])
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("`x['attention_mask']` must hold only 0 and 1.")
        ones = mask.sum(-1)
        first = mask.argmax(-1)
        holes = (ones == 0) | (mask.flip(-1).argmax(-1) != mask.shape[-1] - first - ones)
        if bool(holes.any()):
            item = int(holes.nonzero()[0])
            where = f"pair {item // 2}, item {item % 2}" if ids.ndim == 3 else f"item {item}"
            raise ValueError(
                f"`x['attention_mask']` of {where} is {mask[item].tolist()}; each item needs one "
                "unbroken run of ones (its tokens) with pads only before or after it, and at "
                "least one token."
            )
        return tokens

    def _network_inputs(self, tokens: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Keyword arguments for ``net`` from checked items ``(N, L)``: for a Hugging Face
        network, every item moved to the right of its row, masked positions set to the pad id."""
        if not self.hugging_face:
            return dict(tokens)
        config = _text_config(self.net)
        mask = tokens["attention_mask"]
        length = mask.shape[-1]
        first = mask.argmax(-1, keepdim=True)
        positions = torch.arange(length, device=mask.device)
        index = (positions + first).clamp(max=length - 1)  # (N, L): shift each item left
        keep = positions < mask.sum(-1, keepdim=True)
        out: dict[str, Any] = {
            key: value.gather(1, index).masked_fill(~keep, 0) for key, value in tokens.items()
        }
        out["input_ids"] = out["input_ids"].masked_fill(~keep, int(config.pad_token_id))
        out["attention_mask"] = keep.to(mask.dtype)
        if getattr(config, "use_cache", None) is not None:
            out["use_cache"] = False
        return out
