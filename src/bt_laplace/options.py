"""The options of :func:`~bt_laplace.fit_reward_posterior`, validated in one place.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``*item`` one item.

:class:`FitOptions` states every allowed combination and routes every keyword; nothing is
silently dropped. What concerns the prior (``prior_precision``, ``evidence``, ``val_loader``,
``link_approx`` and the optimizer settings) is one :class:`~bt_laplace.prior.PriorSetting`,
whose table says which settings each method takes (:mod:`bt_laplace.prior.settings`). Every
other keyword goes to the laplace-torch Laplace class (``backend``, ``temperature``,
``prior_mean``, ``backend_kwargs``, ``last_layer_name``, ``feature_reduction``, ...);
``backend`` defaults to the exact :class:`~bt_laplace.curvature.BradleyTerryGGN` and
``likelihood`` is always ``"reward_modeling"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from bt_laplace._checks import (
    BTLaplaceWarning,
    all_finite,
    check_centering,
    check_choice,
    check_input_dtype,
)
from bt_laplace._dtypes import HALF_DTYPES, model_dtype
from bt_laplace._layer_io import LayerIORecorder, is_linear_layer
from bt_laplace.choices import Evidence, LinkApprox, PriorMethod, SubsetOfWeights
from bt_laplace.curvature import BradleyTerryGGN, is_pair_backend
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.prior.settings import (
    AUTO_EXACT_EVIDENCE_FLOPS,
    METHODS,
    PRIOR_KWARGS,
    PRIOR_SETTINGS,
    PRIOR_STRUCTURES,
    PriorSetting,
)
from bt_laplace.structures import STRUCTURES, PosteriorStructure

__all__ = [
    "FitOptions",
    "SUBSETS",
    "HESSIAN_STRUCTURES",
    "PRIOR_METHODS",
    "EVIDENCES",
    "LINK_APPROXIMATIONS",
    "PRIOR_SETTINGS",
    "PRIOR_STRUCTURES",
    "FULL_MEMORY_LIMIT",
    "AUTO_STATE_LIMIT",
    "auto_state_bytes",
    "AUTO_EXACT_EVIDENCE_FLOPS",
    "PRIOR_KWARGS",
]

SUBSETS = SubsetOfWeights.values()
HESSIAN_STRUCTURES = tuple(STRUCTURES)
PRIOR_METHODS = METHODS
EVIDENCES = Evidence.values()
#: ``subset_of_weights="auto"`` takes all weights when the posterior's state over them (the
#: structure's :meth:`~bt_laplace.structures.PosteriorStructure.state_numbers`, in the model's
#: dtype) fits in this many bytes: 4 GiB, a LoRA posterior (r = 16 on every projection) of a
#: 32-layer Llama-3-8B at the default ``kron_rank`` (62 MB a layer, docs/results/lora_scale.md)
AUTO_STATE_LIMIT = 4 * 2**30
LINK_APPROXIMATIONS = LinkApprox.values()
#: largest dense posterior ``full`` builds, in bytes (P x P matrix)
FULL_MEMORY_LIMIT = 4 * 2**30


@dataclass(frozen=True)
class FitOptions:
    """Validated options of one fit. Build with :meth:`from_arguments`.

    Attributes:
        subset_of_weights: ``"auto"`` (until :meth:`check_model`), ``"all"`` or
            ``"last_layer"``.
        hessian_structure: ``"diag"``, ``"kron"`` or ``"full"``.
        laplace_kwargs: Keywords for the laplace-torch Laplace class (``backend`` filled in).
        prior: How to set the prior precision; its held-out calibration is kept only where it
            applies, an all-weights ``kron`` or ``diag`` posterior from the pair backend.
    """

    subset_of_weights: SubsetOfWeights
    hessian_structure: str
    laplace_kwargs: dict[str, Any] = field(default_factory=dict)
    prior: PriorSetting = field(default_factory=lambda: PriorSetting(PriorMethod.MARGLIK))

    @property
    def pair_backend(self) -> bool:
        """Whether the curvature comes from bt_laplace's exact pair backend."""
        return is_pair_backend(self.laplace_kwargs.get("backend", BradleyTerryGGN))

    @property
    def dict_key_y(self) -> str:
        """Label key of dict batches (laplace-torch's ``dict_key_y``)."""
        return str(self.laplace_kwargs.get("dict_key_y", "labels"))

    @property
    def structure(self) -> type[PosteriorStructure]:
        """The :mod:`bt_laplace.structures` class of the posterior."""
        return STRUCTURES[self.hessian_structure]

    @classmethod
    def from_arguments(
        cls,
        *,
        subset_of_weights: str,
        hessian_structure: str,
        prior_precision: str | float,
        evidence: str,
        val_loader: Iterable[Any] | None,
        link_approx: str,
        laplace_kwargs: dict[str, Any],
        center_rewards_coefficient: float | None = None,
    ) -> FitOptions:
        """Check the arguments of :func:`~bt_laplace.fit_reward_posterior` and route
        ``laplace_kwargs``; raises ``ValueError`` naming the argument and the fix."""
        subset = SubsetOfWeights.check("subset_of_weights", subset_of_weights)
        structure = check_choice("hessian_structure", hessian_structure, HESSIAN_STRUCTURES)
        laplace_kwargs = dict(laplace_kwargs)
        if "likelihood" in laplace_kwargs:
            raise ValueError("`likelihood` is always 'reward_modeling'; do not pass it.")
        prior = PriorSetting.from_arguments(
            prior_precision=prior_precision,
            evidence=evidence,
            val_loader=val_loader,
            link_approx=link_approx,
            kwargs=laplace_kwargs,
        )
        if subset is SubsetOfWeights.AUTO and "last_layer_name" in laplace_kwargs:
            subset = SubsetOfWeights.LAST_LAYER
        if subset is not SubsetOfWeights.AUTO:
            prior.check_structure(subset, structure)
        laplace_kwargs.setdefault("backend", BradleyTerryGGN)
        _route_centering(laplace_kwargs, center_rewards_coefficient)
        return cls(subset, structure, laplace_kwargs, prior)

    def resolve_evidence(self, laplace: Any) -> Evidence:
        """``evidence="auto"`` once the fit has counted the pairs
        (:meth:`~bt_laplace.prior.PriorSetting.resolve_evidence`)."""
        return self.prior.resolve_evidence(laplace, self.pair_backend)

    # ------------------------------------------------------------------ model and data
    def check_model(self, model: Any, train_loader: Any) -> FitOptions:
        """Refuse a model or loader the fit would fail on or get wrong, before fitting: the
        types, loader inputs of another dtype than the model, a model with nothing to fit or
        a last layer that is not a trainable ``nn.Linear``, a dense ``full`` posterior above
        :data:`FULL_MEMORY_LIMIT`. Puts the model in eval mode (with a warning when that
        changes dropout or batch norm).

        Returns:
            The options to fit with: these, or for a model that is a bare linear head, with
            ``last_layer_name`` set (laplace-torch cannot find the last layer of a model
            with one module).
        """
        if not isinstance(model, PairwiseRewardModel):
            raise TypeError(
                f"`model` must be a bt_laplace.PairwiseRewardModel, got "
                f"{type(model).__name__}; wrap your reward network: PairwiseRewardModel(net)."
            )
        if not isinstance(train_loader, Iterable) or iter(train_loader) is train_loader:
            raise TypeError(
                f"`train_loader` must be a torch DataLoader of pairs (or another iterable that "
                f"can be iterated more than once), got {type(train_loader).__name__}; build one "
                "with bt_laplace.preference_dataloader."
            )
        dtype = model_dtype(model)
        if dtype in HALF_DTYPES and not self.pair_backend:
            backend = self.laplace_kwargs["backend"]
            raise ValueError(
                f"`model` has {dtype} parameters and backend={backend.__name__} computes its "
                "curvature in the model's dtype, where sums over many pairs lose their digits; "
                "leave `backend` out (bt_laplace's BradleyTerryGGN reads a half-precision model "
                "in its dtype and sums in float32), or fit a float32 copy: model.float()."
            )
        for name, p in model.named_parameters():
            if not all_finite(p):
                raise ValueError(
                    f"`model` parameter {name!r} holds NaN or infinite values; the posterior "
                    "of a broken model means nothing. Retrain or reload the weights."
                )
        stochastic = [
            type(m).__name__
            for m in model.modules()
            if m.training
            and isinstance(m, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase))
        ]
        if stochastic:
            warnings.warn(
                f"`model` was in training mode with {sorted(set(stochastic))}; switched it to "
                "eval mode for the fit (in training mode the items of a batch interact and the "
                "curvature is wrong). Call model.eval() before fitting to silence this.",
                BTLaplaceWarning,
                stacklevel=3,
            )
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                "every parameter of `model` is frozen (requires_grad=False), so the posterior "
                "would cover nothing; unfreeze those it should cover, e.g. the reward head."
            )
        model.eval()
        first_x = _first_inputs(train_loader)
        x_dtype = getattr(first_x, "dtype", dtype)
        fix = f"model.to({x_dtype}), or preference_dataloader(..., dtype={dtype})"
        check_input_dtype(first_x, dtype, "`train_loader` yields x of", fix)
        options = self
        if self.subset_of_weights is SubsetOfWeights.AUTO:
            options = replace(self, subset_of_weights=_auto_subset(model, first_x, self))
            self.prior.check_structure(options.subset_of_weights, self.hessian_structure)
        if options.subset_of_weights is SubsetOfWeights.LAST_LAYER:
            options = options._check_last_layer(model, first_x)
        if options.structure.dense_covariance:
            options._check_full_memory(model, first_x)
        calibrated = (
            options.subset_of_weights is SubsetOfWeights.ALL
            and not options.structure.dense_covariance
            and options.pair_backend
        )
        if options.prior.calibrate and not calibrated:  # exact already, or not ours to match
            options = replace(options, prior=replace(options.prior, calibrate=False))
        return options

    def _check_last_layer(self, model: nn.Module, first_x: Any) -> FitOptions:
        given = self.laplace_kwargs.get("last_layer_name")
        name, layer = _last_layer(model, first_x, given)
        if is_linear_layer(layer) and not isinstance(layer, nn.Linear):  # Conv1D
            raise ValueError(
                f"the last layer of `model`, {name!r}, is a {type(layer).__name__}; "
                "laplace-torch's last-layer posterior takes an nn.Linear head only. For the same "
                "posterior over this head, freeze the rest of the model "
                "(requires_grad_(False)) and use subset_of_weights='all', or name an nn.Linear "
                "with last_layer_name=..."
            )
        if not isinstance(layer, nn.Linear):
            raise ValueError(
                f"the last layer of `model`, {name!r}, is a {type(layer).__name__}; a last-layer "
                "posterior needs an nn.Linear reward head. End the model with one, name another "
                "layer with last_layer_name=..., or use subset_of_weights='all'."
            )
        if not any(p.requires_grad for p in layer.parameters()):
            raise ValueError(
                f"the last layer of `model`, {name!r}, is frozen (requires_grad=False); a "
                f"last-layer posterior covers its parameters: {name}.requires_grad_(True), or "
                "use subset_of_weights='all' for the trainable ones."
            )
        leaves = [m for m in model.modules() if not list(m.children())]
        if given is None and len(leaves) == 1:
            return replace(self, laplace_kwargs={**self.laplace_kwargs, "last_layer_name": name})
        return self

    def _check_full_memory(self, model: nn.Module, first_x: Any) -> None:
        if self.subset_of_weights is SubsetOfWeights.ALL:
            n = sum(p.numel() for p in model.parameters() if p.requires_grad)
            what, fix = f"all {n:,} parameters", "or subset_of_weights='last_layer'"
        else:
            name, layer = _last_layer(model, first_x, self.laplace_kwargs.get("last_layer_name"))
            n = sum(p.numel() for p in layer.parameters())
            what, fix = f"the {n:,} parameters of the last layer {name!r}", "a smaller head"
        need = n * n * next(model.parameters()).element_size()
        if need > FULL_MEMORY_LIMIT:
            raise ValueError(
                f"hessian_structure='full' over {what} needs a dense {n:,} x {n:,} matrix "
                f"({need / 2**30:.1f} GiB, several copies during inversion), above the "
                f"{FULL_MEMORY_LIMIT / 2**30:.0f} GiB limit; use hessian_structure='kron' or "
                f"'diag', {fix}."
            )

    # ------------------------------------------------------------------ build
    def build_laplace(self, model: nn.Module) -> Any:
        """The unfitted laplace-torch posterior for these options."""
        return self.structure.build_laplace(
            model, self.subset_of_weights, pair_backend=self.pair_backend, **self.laplace_kwargs
        )


def _auto_subset(model: nn.Module, first_x: Any, options: FitOptions) -> SubsetOfWeights:
    """``subset_of_weights="auto"``: all weights when every trainable parameter sits in a
    linear layer (``nn.Linear`` or transformers' ``Conv1D``, so a peft LoRA model's adapters
    and score head) on the fast path (one call per forward) and the chosen structure's state
    over them fits :data:`AUTO_STATE_LIMIT` (for ``full`` the same 4 GiB as
    :data:`FULL_MEMORY_LIMIT`); else the last layer. On real preference data the all-weights
    posterior is the one that improves calibration and tells unfamiliar items apart
    (docs/results/real_data.md); a last layer on learned features barely moves the MAP
    model."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not options.pair_backend or auto_state_bytes(params, options) > AUTO_STATE_LIMIT:
        return SubsetOfWeights.LAST_LAYER
    recorder = LayerIORecorder(model, params)
    x = first_x[:1] if isinstance(first_x, torch.Tensor) else first_x
    fits = recorder.try_run(lambda: model(x)) is not None
    return SubsetOfWeights.ALL if fits else SubsetOfWeights.LAST_LAYER


def auto_state_bytes(params: Sequence[torch.Tensor], options: FitOptions) -> int:
    """Bytes of the state of an all-weights posterior of ``options``' structure over
    ``params`` (with its ``backend_kwargs``), as ``subset_of_weights="auto"`` weighs it."""
    shapes = [tuple(p.shape) for p in params]
    kwargs = options.laplace_kwargs.get("backend_kwargs") or {}
    n = options.structure.state_numbers(shapes, kwargs)
    return n * params[0].element_size()


def _first_inputs(loader: Iterable[Any]) -> Any:
    """The inputs of the loader's first batch (laplace-torch's last-layer fit peeks the same)."""
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError("`train_loader` yielded no pairs; pass a non-empty loader.") from None
    if isinstance(batch, Mapping):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Mapping):
        return batch[0]  # (token dict, labels)
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"`train_loader` must yield (x, y) pairs of tensors, got {type(batch).__name__}; "
            "build it with bt_laplace.preference_dataloader."
        )
    return batch[0]


def _last_layer(model: nn.Module, x: Any, name: str | None) -> tuple[str, nn.Module]:
    """The module laplace-torch's last-layer Laplace will use: ``name`` if given, else the
    leaf module whose first call comes last in a forward pass on one pair (as laplace-torch
    finds it: a module called again later, such as a shared activation, keeps its first
    place)."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ValueError(f"`last_layer_name`={name!r} is not a module of `model`.")
        return name, modules[name]
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, n=n: None if n in order else order.append(n))
        for n, m in modules.items()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():  # one pair: through a transformer a batch costs 1/N of the fit
            model(_first_pair(x))
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError("`model` called no leaf module on a pair; it has no last layer.")
    return order[-1], modules[order[-1]]


def _first_pair(x: Any) -> Any:
    """The first pair of a batch: a tensor ``(B, 2, ...)`` or a token dict of them."""
    if isinstance(x, torch.Tensor):
        return x[:1]
    if isinstance(x, Mapping):
        return {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    return x


def _route_centering(laplace_kwargs: dict[str, Any], coefficient: float | None) -> None:
    """Put ``center_rewards_coefficient`` into the pair backend's ``backend_kwargs``, or
    refuse it with another backend or beside a different value there."""
    coefficient = check_centering(coefficient)
    if not coefficient:
        return
    backend = laplace_kwargs["backend"]
    if not is_pair_backend(backend):
        raise ValueError(
            f"`center_rewards_coefficient` adds the centering term's curvature in bt_laplace's "
            f"BradleyTerryGGN, but backend={getattr(backend, '__name__', backend)!r}; leave "
            "`backend` out."
        )
    kwargs = dict(laplace_kwargs.get("backend_kwargs") or {})
    given = kwargs.get("center_rewards_coefficient")
    if given is not None and check_centering(given) != coefficient:
        raise ValueError(
            f"`center_rewards_coefficient`={coefficient} but backend_kwargs holds "
            f"{given}; pass it once."
        )
    kwargs["center_rewards_coefficient"] = coefficient
    laplace_kwargs["backend_kwargs"] = kwargs
