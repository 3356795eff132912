"""A fitted reward posterior, queried like a regression model.

Shape legend: ``B`` pairs or items, ``2`` the two items of a pair (index 0 first, index 1
second), ``*item`` one item, ``S`` samples.

:class:`RewardPosterior` (built by :func:`~bt_laplace.fit_reward_posterior`, or
:func:`~bt_laplace.load_reward_posterior`) answers queries on tensors or token dicts: reward
mean and variance per item, preference probabilities per pair from the joint 2x2 Gaussian of
the two rewards, rewards relative to a reference, penalized rewards and joint samples; memory
stays within ``batch_size`` items, and queries check their inputs and that the model's weights
are those it was fitted on.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
from laplace.baselaplace import ParametricLaplace
from torch import nn

from bt_laplace._checks import (
    check_choice,
    check_finite,
    check_input_dtype,
    check_positive_int,
    check_tensor,
    group_index,
    n_rows,
)
from bt_laplace._loader import split_batch
from bt_laplace.bradley_terry import (
    bradley_terry_nll,
    margin_shift,
    mc_preference_probability,
    probit_preference_probability,
)
from bt_laplace.choices import Reference
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.options import LINK_APPROXIMATIONS
from bt_laplace.predictive import Predictive

__all__ = ["RewardPrediction", "RewardPosterior"]


class RewardPrediction(NamedTuple):
    """Predictive mean and variance of rewards, each ``(B,)``; unpacks as a tuple."""

    mean: torch.Tensor
    variance: torch.Tensor


def _usable(x: torch.Tensor) -> torch.Tensor:
    """A tensor made under ``torch.inference_mode()`` cannot enter autograd; copy it."""
    return x.clone() if x.is_inference() else x


def _check_finite_inputs(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        rows = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten()
        raise ValueError(
            f"`{name}` holds NaN or infinite values (rows {rows[:5].tolist()}); a NaN item "
            "has no reward, and with reference='group' it would spoil its whole group. Drop "
            "or fix those rows."
        )


def _finite(variance: torch.Tensor) -> torch.Tensor:
    """Refuse variances that overflowed, rather than return them."""
    if not bool(torch.isfinite(variance).all()):
        raise RuntimeError(
            f"reward variances overflowed {variance.dtype} (largest finite input rows give "
            "rewards far outside the training range, or the prior precision is tiny); scale "
            "the inputs like the training ones, or use a float64 model and posterior."
        )
    return variance


def _batches(x: Any, batch_size: int) -> list[Any]:
    """``x`` (a tensor or a token dict) in batches of at most ``batch_size`` rows."""
    if n_rows(x) <= batch_size:
        return [x]
    if isinstance(x, Mapping):
        return [
            {k: v[i : i + batch_size] for k, v in x.items()}
            for i in range(0, n_rows(x), batch_size)
        ]
    return list(x.split(batch_size))


def _per_batch(fn: Callable[[Any], tuple[torch.Tensor, ...]], x: Any, size: int) -> Any:
    """``fn`` over ``x`` in batches of ``size`` rows, its results written into tensors made
    once: no per-batch result outlives its batch, so memory stays that of one batch (many small
    survivors between freed batch buffers would keep the allocator from reusing them)."""
    outs: list[torch.Tensor] | None = None
    start = 0
    for xb in _batches(x, size):
        parts = fn(xb)
        n = parts[0].shape[0]
        if outs is None:
            total = n_rows(x)
            outs = [p.new_empty((total, *p.shape[1:])) for p in parts]
        for out, part in zip(outs, parts, strict=True):
            out[start : start + n] = part
        start += n
    assert outs is not None
    return tuple(outs)


def _take(x: Any, rows: torch.Tensor) -> Any:
    """Rows ``rows`` of a tensor or token dict."""
    if isinstance(x, Mapping):
        return {k: v[rows] for k, v in x.items()}
    return x[rows]


def _token_dict(x: Mapping[str, Any], name: str, device: torch.device) -> dict[str, Any]:
    """A token dict (``BatchEncoding`` too) of tensors, on ``device``, usable by autograd."""
    bad = [k for k, v in x.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(
            f"`{name}` is a token dict, but {bad} are not tensors; tokenize with "
            "return_tensors='pt' (or use bt_laplace.TextPairCollator)."
        )
    return {k: _usable(v).to(device) for k, v in x.items()}


def _is_text(value: Any) -> bool:
    """A string or a list of ``{"role", "content"}`` messages."""
    return isinstance(value, str) or (
        isinstance(value, list) and bool(value) and isinstance(value[0], Mapping)
    )


def _is_text_batch(x: Any) -> bool:
    """A list of texts, TRL rows or pairs of texts: the inputs a tokenizer turns into tokens."""
    return (
        isinstance(x, (list, tuple))
        and bool(x)
        and (_is_text(x[0]) or isinstance(x[0], (Mapping, tuple)))
    )


_F = TypeVar("_F", bound=Callable[..., Any])


def _autograd_query(method: _F) -> _F:
    """Run a query under the posterior's lock (queries from several threads run one at a
    time: they share hooks on one model), after checking that the model's weights are those
    it was fitted on, with autograd available also inside ``torch.inference_mode()`` (scoring
    loops often use it): the variances come from one backward pass through the model."""

    @functools.wraps(method)
    def wrapper(self: RewardPosterior, *args: Any, **kwargs: Any) -> Any:
        with self.lock, torch.inference_mode(False):
            self._check_weights()
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _weights_key(module: nn.Module) -> list[tuple[int, int, torch.dtype, torch.device]]:
    """Where each parameter and buffer lives and how often it was changed in place: equal
    keys mean the same weights (a cheap fingerprint, checked on every query)."""
    tensors = [*module.parameters(), *module.buffers()]
    return [(t.data_ptr(), t._version, t.dtype, t.device) for t in tensors]


class RewardPosterior:
    """A fitted Laplace posterior over a Bradley-Terry reward model.

    Built by :func:`fit_reward_posterior`. Predictions use the linearized (GLM) predictive of
    the underlying laplace-torch object, computed without per-item Jacobians; they carry no
    observation noise.

    Args:
        laplace: The fitted laplace-torch object.
        model: The :class:`~bt_laplace.PairwiseRewardModel` it was fitted on.
        batch_size: Items per forward pass at prediction time (bounds memory).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import bt_laplace as btl
        >>> _ = torch.manual_seed(0)
        >>> model = btl.PairwiseRewardModel(nn.Sequential(nn.Linear(3, 8), nn.Tanh(),
        ...                                               nn.Linear(8, 1)))
        >>> rows = [{"x0": torch.randn(3), "x1": torch.randn(3), "label": i % 2}
        ...         for i in range(16)]
        >>> loader = btl.preference_dataloader(rows, batch_size=8)
        >>> post = btl.fit_reward_posterior(model, loader, subset_of_weights="all",
        ...                                 hessian_structure="diag")
        >>> mean, variance = post(torch.randn(5, 3))
        >>> mean.shape, variance.shape
        (torch.Size([5]), torch.Size([5]))
        >>> post.preference_probability(torch.randn(4, 2, 3)).shape
        torch.Size([4])
    """

    def __init__(
        self, laplace: ParametricLaplace, model: PairwiseRewardModel, *, batch_size: int = 4096
    ) -> None:
        if not getattr(laplace, "n_data", 0):
            raise ValueError(
                f"`laplace` ({type(laplace).__name__}) is not fitted, so it holds only the "
                "prior; build the posterior with bt_laplace.fit_reward_posterior, or call "
                "laplace.fit(loader) first."
            )
        self.laplace = laplace
        self.model = model
        self.batch_size = check_positive_int("batch_size", batch_size)
        #: mean and covariances from layer inputs and output gradients (the query engine)
        self.predictive = Predictive(laplace)
        #: held by every query (they share hooks on one model); hold it to run several
        #: queries as one, e.g. a server's scoring step
        self.lock = threading.RLock()
        self._network: nn.Module = getattr(laplace.model, "model", laplace.model)
        self._weights = _weights_key(self._network)
        #: shape of one real-valued item the posterior was fitted on (None: not recorded)
        self.item_shape: tuple[int, ...] | None = None
        #: the factor the default fit scaled the exact evidence's prior by so that this
        #: block-diagonal posterior gives held-out items the exact posterior's variance
        #: (None: not calibrated, docs/results/prior_sweep.md)
        self.prior_calibration: float | None = None
        #: turns texts into token batches (set by :meth:`set_tokenizer`, or taken from a
        #: :func:`~bt_laplace.text_preference_dataloader` by the fit)
        self.text_collator: Any = None

    def _check_weights(self) -> None:
        if _weights_key(self._network) != self._weights:
            raise RuntimeError(
                "the model's weights changed since the posterior was fitted (trained further, "
                "reloaded or moved to another dtype or device); its curvature belongs to the "
                "old weights. Refit with bt_laplace.fit_reward_posterior, or restore the weights."
            )

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path) -> Path:
        """Write the posterior into the folder ``path`` as safetensors plus a small JSON file
        (beside a Hugging Face model's ``save_pretrained`` files, if you like); load it with
        :func:`~bt_laplace.load_reward_posterior`. See :mod:`bt_laplace.io`.

        Returns:
            The folder.
        """
        from bt_laplace.io import save_reward_posterior

        return save_reward_posterior(self, path)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the model plus the saved record, rebuilt on unpickling (laplace-torch's
        last-layer objects hold local hooks that do not pickle), e.g. to send the posterior
        to a worker process. For files, use :meth:`save`: loading a pickle runs code."""
        from bt_laplace.io import posterior_record, rebuild_posterior

        config, tensors = posterior_record(self)
        return (
            rebuild_posterior,
            (self.model, config, tensors),
            {"text_collator": self.text_collator},
        )

    def __repr__(self) -> str:
        la = self.laplace
        return (
            f"RewardPosterior({type(la).__name__}, n_params={la.n_params}, "
            f"prior_precision={la.prior_precision.detach().cpu().tolist()})"
        )

    # ------------------------------------------------------------------ texts
    def set_tokenizer(
        self,
        tokenizer: Any,
        *,
        max_length: int | None = None,
        truncation: str = "error",
        append_eos: bool = True,
    ) -> RewardPosterior:
        """Let every query take texts: items as strings, message lists or TRL
        prompt-completion rows (``{"prompt", "completion"}``), pairs as TRL preference rows
        (``{"prompt", "chosen", "rejected"}``: item 0 the rejected, item 1 the chosen text) or
        ``(text_0, text_1)`` tuples. Texts are prepared as the training pairs were
        (:class:`~bt_laplace.TextPairCollator`: eos appended, prompt prepended, chat template).
        A fit on :func:`~bt_laplace.text_preference_dataloader` sets this itself.

        Args:
            tokenizer: The tokenizer the model was trained with.
            max_length, truncation, append_eos: As in :class:`~bt_laplace.TextPairCollator`.

        Returns:
            The posterior itself.
        """
        from bt_laplace.text import TextPairCollator

        self.text_collator = TextPairCollator(
            tokenizer, max_length=max_length, truncation=truncation, append_eos=append_eos
        )
        return self

    def _tokens(self, x: list[Any] | tuple[Any, ...], name: str, *, pairs: bool) -> dict[str, Any]:
        """Token dict of a list of texts (items) or TRL rows / text tuples (pairs)."""
        if self.text_collator is None:
            raise TypeError(
                f"`{name}` is a list of texts, but the posterior has no tokenizer; call "
                "post.set_tokenizer(tokenizer) first (a fit on "
                "bt_laplace.text_preference_dataloader sets it), or pass a token dict."
            )
        collator = self.text_collator
        if pairs:
            rows = [
                {"rejected": row[0], "chosen": row[1]}
                if isinstance(row, tuple) and len(row) == 2
                else row
                for row in x
            ]
            if not all(isinstance(row, Mapping) for row in rows):
                raise TypeError(
                    f"`{name}` must be pairs of texts: TRL preference rows {{'prompt', "
                    "'chosen', 'rejected'}} or (text_0, text_1) tuples; got "
                    f"{type(next(r for r in rows if not isinstance(r, Mapping))).__name__}."
                )
            tokens, _ = collator(rows)
            tokens.pop("margin", None)
            return tokens
        if all(isinstance(row, Mapping) and "completion" in row for row in x):
            return collator.collate_items(
                [row["completion"] for row in x], [row.get("prompt") for row in x]
            )
        bad = next((i for i, row in enumerate(x) if not _is_text(row)), None)
        if bad is not None:
            raise TypeError(
                f"`{name}` must be items: strings, message lists or TRL prompt-completion rows "
                f"{{'prompt', 'completion'}}; entry {bad} is {str(x[bad])[:60]!r}"
                + (" (pairs go to preference_probability)." if isinstance(x[bad], tuple) else ".")
            )
        return collator.collate_items(list(x))

    # ------------------------------------------------------------------ inputs
    def _check_dtype(self, x: torch.Tensor) -> None:
        dtype = self.laplace._dtype
        fix = f"x.to({dtype}), or preference_dataloader(..., dtype=...)"
        check_input_dtype(x, dtype, "`x` has", fix)

    def _check_item_shape(self, shape: tuple[int, ...], name: str, x: torch.Tensor) -> None:
        if x.is_floating_point() and self.item_shape is not None and shape != self.item_shape:
            raise ValueError(
                f"`{name}` has items of shape {shape}, but the posterior was fitted on items of "
                f"shape {self.item_shape}; pass items like the training ones."
            )

    def _items(self, x: Any, name: str = "x", *, check_shape: bool = True) -> Any:
        if _is_text_batch(x):
            x = self._tokens(x, name, pairs=False)
        if isinstance(x, Mapping):  # token dict: input_ids (B, L)
            x = _token_dict(x, name, self.laplace._device)
            if self.model.is_pair_batch(x):
                raise ValueError(
                    f"`{name}` must be items, input_ids (B, L), got pairs "
                    f"{tuple(x['input_ids'].shape)}; use preference_probability for pairs."
                )
            return x
        x = _usable(check_tensor(name, x))
        self._check_dtype(x)
        _check_finite_inputs(x, name)
        if self.model.is_pair_batch(x):
            raise ValueError(
                f"`x` must be items of shape (B, *item), got pairs {tuple(x.shape)}; use "
                "preference_probability(x) for pairs, or x.flatten(0, 1) to score both items."
            )
        if check_shape:  # (references are compared with the items instead)
            self._check_item_shape(tuple(x.shape[1:]), name, x)
        return x.to(self.laplace._device)

    def _pairs(self, x: Any) -> Any:
        if _is_text_batch(x):
            x = self._tokens(x, "x", pairs=True)
        if isinstance(x, Mapping):  # token dict: input_ids (B, 2, L)
            x = _token_dict(x, "x", self.laplace._device)
            if not self.model.is_pair_batch(x):
                raise ValueError(
                    f"`x` must be pairs, input_ids (B, 2, L), got {tuple(x['input_ids'].shape)}."
                )
            return x
        x = _usable(check_tensor("x", x))
        self._check_dtype(x)
        _check_finite_inputs(x, "x")
        if not self.model.is_pair_batch(x):
            raise ValueError(
                f"`x` must be pairs of shape (B, 2, *item), got {tuple(x.shape)}; stack the "
                "two items of each pair on dim 1 (torch.stack([x0, x1], dim=1))."
            )
        self._check_item_shape(tuple(x.shape[2:]), "x", x)
        return x.to(self.laplace._device)

    # ------------------------------------------------------------------ queries
    @_autograd_query
    def __call__(self, x: Any) -> RewardPrediction:
        """Predictive mean and variance of the reward of each item.

        Args:
            x: Items ``(B, *item)``: a tensor, a token dict ``input_ids (B, L)``, or texts
                given a tokenizer (:meth:`set_tokenizer`).

        Returns:
            :class:`RewardPrediction` of ``mean`` ``(B,)`` and ``variance`` ``(B,)``.
        """
        x = self._items(x)
        self.laplace.model.eval()
        mean, variance = _per_batch(self.predictive.item_moments, x, self.batch_size)
        return RewardPrediction(mean, _finite(variance))

    predict = __call__

    @_autograd_query
    def pair_moments(self, x: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Joint moments of the two rewards of each pair.

        Args:
            x: Pairs ``(B, 2, *item)``.

        Returns:
            ``(mean (B, 2), variance (B, 2), covariance (B,))``.
        """
        x = self._pairs(x)
        self.laplace.model.eval()
        size = max(1, self.batch_size // 2)
        mean, var, cov = _per_batch(self.predictive.pair_moments, x, size)
        dtype = self.laplace._dtype
        return mean.to(dtype), _finite(var.to(dtype)), cov.to(dtype)

    @_autograd_query
    def difference_moments(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``(B,)`` of the reward difference ``r(x_1) - r(x_0)`` of each pair
        of ``x`` ``(B, 2, *item)``, in float64 on the fast path: the variance
        ``S_00 + S_11 - 2 S_01`` cancels, and differencing float32 pair moments loses it for
        near-duplicate items."""
        x = self._pairs(x)
        self.laplace.model.eval()
        size = max(1, self.batch_size // 2)
        mean, var = _per_batch(self.predictive.difference_moments, x, size)
        return mean, var

    def preference_probability(
        self,
        x: Any,
        *,
        link_approx: str = "probit",
        n_samples: int = 20_000,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Posterior probability that item 1 of each pair is preferred over item 0.

        Uses the full 2x2 covariance of the two rewards through the variance of their
        difference, ``var(r_1 - r_0) = S_00 + S_11 - 2 S_01``:
        ``sigmoid(dmu / sqrt(1 + pi / 8 * var(r_1 - r_0)))`` for ``link_approx="probit"``,
        or the Monte Carlo average of ``sigmoid`` over ``n_samples`` draws for ``"mc"``.

        Args:
            x: Pairs ``(B, 2, *item)``.
            link_approx: ``"probit"`` or ``"mc"``.
            n_samples: Samples for ``"mc"``.
            generator: Random generator for ``"mc"``.

        Returns:
            Probabilities ``(B,)``.
        """
        link = check_choice("link_approx", link_approx, LINK_APPROXIMATIONS)
        if link == "mc":
            n_samples = check_positive_int("n_samples", n_samples)
        # the variance of the difference cancels (v0 + v1 - 2 cov): it comes in float64
        mean_diff, var_diff = self.difference_moments(x)
        if link == "probit":
            p = probit_preference_probability(mean_diff, var_diff)
        else:
            p = mc_preference_probability(
                mean_diff, var_diff, n_samples=n_samples, generator=generator
            )
        return p.to(self.laplace._dtype)

    @_autograd_query
    def relative_reward(
        self, x: Any, reference: Any = "group", *, groups: Any = None
    ) -> RewardPrediction:
        """Mean and variance of each item's reward relative to the mean reward of a reference.

        Bradley-Terry pairs identify rewards only up to a constant (and, when every pair shares
        a prompt, up to a constant per prompt), so the variance of ``post(x)`` carries the
        prior's uncertainty about that offset, the same for every item. The variance of
        ``r(x_n) - mean_m r(ref_m)`` drops what is common to the items and their reference and
        keeps what sets an item apart from it: the uncertainty to rank candidates by.

        Args:
            x: Items ``(B, *item)`` (a token dict, or texts given a tokenizer).
            reference: ``"group"`` (default): the items of ``x`` themselves, e.g. the ``n``
                candidate responses to one prompt in best-of-n (with ``groups``: the items of
                each item's own group); or reference items ``(M, *item)``, e.g. responses the
                model was trained on for that prompt.
            groups: With ``reference="group"``, the group (prompt) of each item: ``None`` (one
                group), integer ids ``(B,)`` or a list of ``B`` hashables (e.g. the prompts),
                so that one call over many prompts' candidates gives per-prompt relative
                rewards.

        Returns:
            :class:`RewardPrediction` of ``mean`` ``(B,)`` (``r(x_n)`` minus the reference's
            mean reward) and ``variance`` ``(B,)``.
        """
        x = self._items(x)
        ref: Any = None
        if isinstance(reference, str):
            check_choice("reference", reference, Reference)
        else:
            if groups is not None:
                raise ValueError(
                    "`groups` goes with reference='group' (each item relative to its own "
                    "group); with reference items every item is relative to the same "
                    "reference, so call once per group instead."
                )
            ref = self._items(reference, "reference", check_shape=False)
            if n_rows(ref) == 0:
                raise ValueError(
                    "`reference` has no items; pass at least one reference item, or "
                    "reference='group'."
                )
            if isinstance(ref, Mapping) != isinstance(x, Mapping):
                raise TypeError(
                    "`reference` and `x` must both be tensors or both token dicts, got "
                    f"{type(reference).__name__} and {type(x).__name__}."
                )
            if not isinstance(x, Mapping) and ref.shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"`reference` items have shape {tuple(ref.shape[1:])} but `x` items have "
                    f"{tuple(x.shape[1:])}; pass reference items of the same shape."
                )
        self.laplace.model.eval()
        if groups is not None:
            index, keys = group_index(groups, n_rows(x))
            return self._relative_by_group(x, index, len(keys))
        refs = None if ref is None else list(_batches(ref, self.batch_size))
        mean, variance = self.predictive.relative_moments(list(_batches(x, self.batch_size)), refs)
        return RewardPrediction(mean, _finite(variance))

    def _relative_by_group(self, x: Any, index: torch.Tensor, n_groups: int) -> RewardPrediction:
        """Each item relative to its own group: one pass when ``x`` fits one batch on the fast
        path, else one :meth:`~bt_laplace.predictive.Predictive.relative_moments` per group."""
        if n_rows(x) <= self.batch_size:
            moments = self.predictive.grouped_relative_moments(x, index, n_groups)
            if moments is not None:
                return RewardPrediction(moments[0], _finite(moments[1]))
        dtype, device = self.laplace._dtype, self.laplace._device
        mean = torch.empty(n_rows(x), dtype=dtype, device=device)
        variance = torch.empty_like(mean)
        for g in range(n_groups):
            rows = (index == g).nonzero().flatten()
            members = _take(x, rows.to(device))
            m, v = self.predictive.relative_moments(list(_batches(members, self.batch_size)), None)
            mean[rows], variance[rows] = m.to(dtype), v.to(dtype)
        return RewardPrediction(mean, _finite(variance))

    def penalized_reward(
        self, x: Any, k: float = 1.0, *, reference: Any = None, groups: Any = None
    ) -> torch.Tensor:
        """Pessimistic reward ``mean - k * sqrt(variance)`` per item ``(B,)``.

        Args:
            x: Items ``(B, *item)`` (a token dict, or texts given a tokenizer).
            k: Number of standard deviations to subtract (``k < 0`` gives an optimistic bonus).
            reference: None (default): the absolute reward's moments, ``post(x)``.
                ``"group"`` or reference items ``(M, *item)``: the moments of
                :meth:`relative_reward`, whose variance leaves out the offset pairs cannot
                identify; use ``"group"`` to rank the candidates of one prompt (the ranking
                is that of ``mean - k * std`` relative to the group).
            groups: With ``reference="group"``, the group of each item, as in
                :meth:`relative_reward` (candidates of many prompts in one call).
        """
        k = check_finite("k", k)
        if reference is None:
            if groups is not None:
                raise ValueError(
                    "`groups` needs reference='group' (rewards relative to each group); "
                    "absolute rewards (reference=None) do not depend on the groups."
                )
            mean, variance = self(x)
        else:
            mean, variance = self.relative_reward(x, reference, groups=groups)
        return mean - k * variance.sqrt()

    @_autograd_query
    def sample(
        self,
        x: Any,
        n_samples: int = 100,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Joint samples of the linearized rewards of all items in ``x``.

        Args:
            x: Items ``(B, *item)``.
            n_samples: Number of samples ``S``.
            generator: Random generator (on the posterior's device).

        Returns:
            ``(S, B)``; rows are draws of one function, so items are correlated across columns.
        """
        x = self._items(x)
        n_samples = check_positive_int("n_samples", n_samples)
        if n_rows(x) > self.batch_size:
            raise ValueError(
                f"`x` has {n_rows(x)} items but joint samples are drawn in one pass of at "
                f"most batch_size={self.batch_size}; pass fewer items or raise `batch_size`."
            )
        self.laplace.model.eval()
        return self.predictive.samples(x, n_samples, generator)

    # ------------------------------------------------------------------ hyperparameters
    @property
    def prior_precision(self) -> torch.Tensor:
        """The prior precision of the laplace-torch posterior."""
        return self.laplace.prior_precision

    def optimize_prior_precision(
        self,
        method: str = "gridsearch",
        *,
        val_loader: Iterable[Any] | None = None,
        train_loader: Iterable[Any] | None = None,
        link_approx: str = "probit",
        progress_bar: bool = False,
        distributed: bool = True,
        **prior_kwargs: Any,
    ) -> torch.Tensor:
        """Set the prior precision again, after the fit or on a loaded posterior (laplace-torch's
        ``optimize_prior_precision``, with the rules of :func:`~bt_laplace.fit_reward_posterior`).

        The curvature does not change, so no pass over the training pairs is needed except for
        the exact evidence. The usual case: validation pairs of unseen items arrive after the
        fit (an eval split, fresh labels). On real ratings the structured posteriors need a
        prior well below the evidence's to be calibrated on new items, and validation pairs
        find it (docs/results/prior_sweep.md).

        Args:
            method: ``"gridsearch"`` (default; minimize the validation NLL of the pair
                probabilities over ``log_prior_prec_min``..``log_prior_prec_max`` in
                ``grid_size`` steps, needs ``val_loader``) or ``"marglik"`` (maximize the
                Laplace evidence: the exact Bradley-Terry GGN's when ``train_loader`` is
                given, else the fitted structure's own, laplace-torch's procedure).
            val_loader: Validation pairs ``(x, y)`` for ``"gridsearch"``.
            train_loader: The pairs the posterior was fitted on, every one once, for the
                exact evidence of ``"marglik"``.
            link_approx: Pair probability that scores the grid search.
            progress_bar: Show a tqdm bar.
            distributed: Sum the validation NLL or the exact evidence across the ranks of an
                initialized ``torch.distributed`` process group, as the fit does.
            **prior_kwargs: Settings of the method (``grid_size``, ``log_prior_prec_min``,
                ``log_prior_prec_max``; ``n_steps``, ``lr``, ``prior_structure`` for the
                structure's own evidence).

        Returns:
            The new prior precision (also in :attr:`prior_precision`).

        Raises:
            ValueError: If ``method`` is not one of the two, ``"gridsearch"`` has no
                ``val_loader``, or a setting does not belong to the method.
        """
        from bt_laplace._distributed import Processes
        from bt_laplace._loader import CheckedPairLoader
        from bt_laplace.fit import _set_prior
        from bt_laplace.options import PRIOR_KWARGS, FitOptions
        from bt_laplace.structures import structure_class

        if method not in ("gridsearch", "marglik"):
            raise ValueError(
                f"`method` must be 'gridsearch' or 'marglik', got {method!r}; to set a number, "
                "assign it: post.laplace.prior_precision = value."
            )
        if method == "marglik" and val_loader is not None:
            raise ValueError(
                "`val_loader` is only used by method='gridsearch'; drop it, or pass "
                "method='gridsearch'."
            )
        if method == "gridsearch" and train_loader is not None:
            raise ValueError(
                "`train_loader` is only used by method='marglik' (the exact evidence); drop "
                "it, or pass method='marglik'."
            )
        unknown = sorted(set(prior_kwargs) - set(PRIOR_KWARGS))
        if unknown:
            raise ValueError(
                f"optimize_prior_precision got unknown settings {unknown}; the prior methods "
                f"take {list(PRIOR_KWARGS)}."
            )
        la = self.laplace
        options = FitOptions.from_arguments(
            subset_of_weights="last_layer" if hasattr(la.model, "last_layer") else "all",
            hessian_structure=structure_class(la).name,
            prior_precision=method,
            evidence="exact" if train_loader is not None else "posterior",
            val_loader=val_loader,
            link_approx=link_approx,
            laplace_kwargs={**prior_kwargs, "backend": la._backend_cls},
        )
        train = None
        if train_loader is not None:
            train = CheckedPairLoader(
                train_loader, "train_loader", options.dict_key_y, margin=options.pair_backend
            )
        val = None if val_loader is None else CheckedPairLoader(val_loader, "val_loader")
        _set_prior(
            self,
            options,
            train,  # type: ignore[arg-type]
            val,
            processes=Processes(distributed),
            progress_bar=progress_bar,
        )
        self.prior_calibration = None  # the prior is now the method's, as it finds it
        return self.prior_precision

    def log_marginal_likelihood(self) -> torch.Tensor:
        """Laplace approximation of the log marginal likelihood at the current prior."""
        return self.laplace.log_marginal_likelihood().detach()

    def validation_nll(self, loader: Iterable[Any], *, link_approx: str = "probit") -> float:
        """Mean negative log likelihood of the labels of a loader of pairs ``(x, y)``."""
        total, count = self._nll_sum(loader, link_approx)
        if count == 0:
            raise ValueError("`loader` yielded no pairs; pass a non-empty validation loader.")
        return total / count

    def _nll_sum(self, loader: Iterable[Any], link_approx: str) -> tuple[float, int]:
        """Summed NLL and count of the labels; a batch's ``margin`` (TRL's) shifts the logit
        as in the likelihood the model was trained with."""
        total, count = 0.0, 0
        for batch in loader:
            x, y = split_batch(batch)
            shift = margin_shift(x, y)
            if shift is None:
                p = self.preference_probability(x, link_approx=link_approx)
            else:
                mean_diff, var_diff = self.difference_moments(x)
                mean_diff = mean_diff - shift.to(mean_diff)
                if link_approx == "mc":
                    p = mc_preference_probability(mean_diff, var_diff, n_samples=20_000)
                else:
                    p = probit_preference_probability(mean_diff, var_diff)
            total += float(bradley_terry_nll(p, y.to(p.device))) * len(y)
            count += len(y)
        return total, count


def __getattr__(name: str) -> object:
    """``bt_laplace.posterior.fit_reward_posterior`` moved to :mod:`bt_laplace.fit` (the top
    level, ``bt_laplace.fit_reward_posterior``, is the stable spelling)."""
    if name == "fit_reward_posterior":
        import warnings

        from bt_laplace import fit

        warnings.warn(
            "bt_laplace.posterior.fit_reward_posterior moved to bt_laplace.fit; use "
            "bt_laplace.fit_reward_posterior.",
            DeprecationWarning,
            stacklevel=2,
        )
        return fit.fit_reward_posterior
    raise AttributeError(f"module 'bt_laplace.posterior' has no attribute {name!r}")
