"""The options of :func:`~bt_laplace.fit_reward_posterior`, validated in one place.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``*item`` one item.

:class:`FitOptions` states every allowed combination and routes every keyword; nothing is
silently dropped. The combinations:

===================  ============  ==========================================================
``prior_precision``  ``evidence``  optimizer settings it takes (``**laplace_kwargs``)
===================  ============  ==========================================================
``"marglik"``        posterior     ``n_steps``, ``lr``, ``init_prior_prec``, ``prior_structure``
``"marglik"``        exact         ``prior_structure`` (``"scalar"`` only)
``"gridsearch"``     posterior     ``grid_size``, ``log_prior_prec_min``, ``log_prior_prec_max``,
                                   ``log_prior_prec_base``, ``prior_structure`` (scalar only);
                                   needs ``val_loader``
a positive number    posterior     none
===================  ============  ==========================================================

``prior_structure`` other than ``"scalar"`` is for ``"marglik"`` with the posterior's own
evidence, and only where laplace-torch's class for the subset and structure takes it
(:data:`PRIOR_STRUCTURES`): all weights ``diag``/``full`` take ``"layerwise"`` and ``"diag"``,
all weights ``kron`` ``"layerwise"``, last layer ``diag``/``full`` ``"diag"``, last layer
``kron`` neither. Every other keyword goes to the laplace-torch Laplace class (``backend``,
``temperature``, ``prior_mean``, ``backend_kwargs``, ``last_layer_name``,
``feature_reduction``, ...); ``backend`` defaults to the exact
:class:`~bt_laplace.curvature.BradleyTerryGGN` and ``likelihood`` is always
``"reward_modeling"``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from laplace import Laplace
from torch import nn

from bt_laplace._checks import BTLaplaceWarning, check_choice, check_input_dtype
from bt_laplace._layer_io import LayerIORecorder, is_linear_layer, posterior_parameters
from bt_laplace.choices import Evidence, LinkApprox, PriorMethod, SubsetOfWeights
from bt_laplace.curvature import BradleyTerryGGN
from bt_laplace.model import PairwiseRewardModel
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
]

SUBSETS = SubsetOfWeights.values()
HESSIAN_STRUCTURES = tuple(STRUCTURES)
PRIOR_METHODS = PriorMethod.values()[:-1]  # "fixed" is what a number becomes
EVIDENCES = Evidence.values()
#: ``subset_of_weights="auto"`` takes all weights up to this many trainable parameters: the
#: largest MLP measured (docs/results/auto_subset.md: 4,986,881 parameters, an all-weights kron
#: fit 3.9x one training epoch, ``post(x)`` 9.2x the forward pass, 193 MiB of curvature)
AUTO_ALL_WEIGHTS_LIMIT = 5_000_000
#: ``evidence="auto"`` takes the exact evidence up to this many floating-point operations
#: (about 5 s on 2 cores): up to ~4,600 pairs for an all-weights MLP, ~600,000 pairs for a
#: 385-parameter last layer
AUTO_EXACT_EVIDENCE_FLOPS = 1e11
LINK_APPROXIMATIONS = LinkApprox.values()
#: optimizer settings each way of setting the prior takes, by (method, evidence)
PRIOR_SETTINGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("marglik", "posterior"): ("n_steps", "lr", "init_prior_prec", "prior_structure"),
    ("marglik", "exact"): ("prior_structure",),
    ("gridsearch", "posterior"): (
        "grid_size",
        "log_prior_prec_min",
        "log_prior_prec_max",
        "log_prior_prec_base",
        "prior_structure",
    ),
    ("fixed", "posterior"): (),
}
#: every keyword of ``**laplace_kwargs`` that goes to the prior, not to the Laplace class
PRIOR_KWARGS = tuple(dict.fromkeys(k for keys in PRIOR_SETTINGS.values() for k in keys))
#: prior structures laplace-torch's classes take, by (subset_of_weights, hessian_structure)
PRIOR_STRUCTURES: dict[tuple[str, str], tuple[str, ...]] = {
    ("all", "diag"): ("scalar", "layerwise", "diag"),
    ("all", "kron"): ("scalar", "layerwise"),
    ("all", "full"): ("scalar", "layerwise", "diag"),
    ("last_layer", "diag"): ("scalar", "diag"),
    ("last_layer", "kron"): ("scalar",),
    ("last_layer", "full"): ("scalar", "diag"),
}
#: largest dense posterior ``full`` builds, in bytes (P x P matrix)
FULL_MEMORY_LIMIT = 4 * 2**30


@dataclass(frozen=True)
class FitOptions:
    """Validated options of one fit. Build with :meth:`from_arguments`.

    Attributes:
        subset_of_weights: ``"all"`` or ``"last_layer"``.
        hessian_structure: ``"diag"``, ``"kron"`` or ``"full"``.
        prior_method: ``"marglik"``, ``"gridsearch"`` or ``"fixed"``.
        prior_value: The prior precision when ``prior_method == "fixed"``.
        evidence: ``"posterior"`` or ``"exact"``.
        link_approx: ``"probit"`` or ``"mc"`` (scores the grid search).
        laplace_kwargs: Keywords for the laplace-torch Laplace class (``backend`` filled in).
        prior_kwargs: Keywords for the prior method.
        calibrate: ``prior_precision="auto"`` without validation pairs: after the exact
            evidence, scale a block-diagonal all-weights posterior's prior to match the exact
            posterior on held-out items (``bt_laplace.fit``, docs/results/prior_sweep.md).
    """

    subset_of_weights: str
    hessian_structure: str
    prior_method: str
    prior_value: float | None
    evidence: str
    link_approx: str
    laplace_kwargs: dict[str, Any] = field(default_factory=dict)
    prior_kwargs: dict[str, Any] = field(default_factory=dict)
    calibrate: bool = False

    @property
    def pair_backend(self) -> bool:
        """Whether the curvature comes from bt_laplace's exact pair backend."""
        backend = self.laplace_kwargs.get("backend", BradleyTerryGGN)
        return isinstance(backend, type) and issubclass(backend, BradleyTerryGGN)

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
    ) -> FitOptions:
        """Check the arguments of :func:`~bt_laplace.fit_reward_posterior` and route
        ``laplace_kwargs``; raises ``ValueError`` naming the argument and the fix."""
        subset = check_choice("subset_of_weights", subset_of_weights, SUBSETS)
        structure = check_choice("hessian_structure", hessian_structure, HESSIAN_STRUCTURES)
        value: float | None = None
        if isinstance(prior_precision, str):
            method = check_choice("prior_precision", prior_precision, PRIOR_METHODS)
            if method == "auto":
                method = "marglik" if val_loader is None else "gridsearch"
            if method == "gridsearch" and val_loader is None:
                raise ValueError(
                    "`prior_precision='gridsearch'` needs `val_loader`, a DataLoader of "
                    "validation pairs; pass one or use prior_precision='marglik'."
                )
        elif (
            isinstance(prior_precision, bool)
            or not isinstance(prior_precision, (int, float))
            or (not math.isfinite(prior_precision) or prior_precision <= 0)
        ):
            raise ValueError(
                f"`prior_precision` must be 'marglik', 'gridsearch' or a positive number, got "
                f"{prior_precision!r}."
            )
        else:
            method, value = "fixed", float(prior_precision)
        evidence = check_choice("evidence", evidence, EVIDENCES)
        if evidence == "auto" and method != "marglik":
            evidence = "posterior"  # the evidence is only used by marglik
        if evidence == "exact" and method != "marglik":
            raise ValueError(
                f"`evidence='exact'` chooses the evidence that prior_precision='marglik' "
                f"maximizes, but prior_precision={prior_precision!r}; use "
                "prior_precision='marglik' or leave evidence at 'posterior'."
            )
        if val_loader is not None and method != "gridsearch":
            warnings.warn(
                "`val_loader` is only used with prior_precision='gridsearch'; it is ignored.",
                BTLaplaceWarning,
                stacklevel=3,
            )
        link = check_choice("link_approx", link_approx, LINK_APPROXIMATIONS)
        laplace_kwargs = dict(laplace_kwargs)
        if "likelihood" in laplace_kwargs:
            raise ValueError("`likelihood` is always 'reward_modeling'; do not pass it.")
        prior_kwargs = {k: laplace_kwargs.pop(k) for k in PRIOR_KWARGS if k in laplace_kwargs}
        if evidence == "auto" and any(
            k != "prior_structure" or v != "scalar" for k, v in prior_kwargs.items()
        ):
            evidence = "posterior"  # optimizer settings or a vector prior: laplace-torch's way
        _check_prior_kwargs(method, "posterior" if evidence == "auto" else evidence, prior_kwargs)
        if subset == "auto" and "last_layer_name" in laplace_kwargs:
            subset = "last_layer"
        if subset != "auto":
            prior_structure = prior_kwargs.get("prior_structure", "scalar")
            _check_prior_structure(subset, structure, prior_structure)
        laplace_kwargs.setdefault("backend", BradleyTerryGGN)
        calibrate = (
            prior_precision == "auto" and evidence == "auto" and val_loader is None
        ) and not prior_kwargs
        return cls(
            subset,
            structure,
            method,
            value,
            evidence,
            link,
            laplace_kwargs,
            prior_kwargs,
            calibrate=calibrate,
        )

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
        dtype = next(model.parameters()).dtype
        if dtype in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"`model` has {dtype} parameters; the curvature needs an eigendecomposition "
                "that half precision cannot hold. Fit in float32: model.float() (and "
                "preference_dataloader(..., dtype=torch.float32)); cast back for serving."
            )
        for name, p in model.named_parameters():
            if not bool(torch.isfinite(p).all()):
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
        if self.subset_of_weights == "auto":
            options = replace(self, subset_of_weights=_auto_subset(model, first_x, self))
            prior_structure = self.prior_kwargs.get("prior_structure", "scalar")
            _check_prior_structure(
                options.subset_of_weights, self.hessian_structure, prior_structure
            )
        if options.subset_of_weights == "last_layer":
            options = options._check_last_layer(model, first_x)
        if options.hessian_structure == "full":
            options._check_full_memory(model, first_x)
        return options

    def resolve_evidence(self, laplace: Any) -> str:
        """``evidence="auto"`` once the fit has counted the pairs: ``"exact"`` when its
        estimated cost is at most :data:`AUTO_EXACT_EVIDENCE_FLOPS`, else ``"posterior"``."""
        if self.evidence != "auto":
            return self.evidence
        if not self.pair_backend:  # another backend: laplace-torch's procedure, as it does
            return "posterior"
        n, p = int(laplace.n_data), int(laplace.n_params)
        if p <= n:  # P x P GGN from N rows, then its eigendecomposition
            flops = n * p * p + p**3
        else:  # N x N pair kernel from Gram products per layer, then its eigendecomposition
            widths = sum(sum(t.shape) for t in posterior_parameters(laplace) if t.ndim == 2)
            flops = n * n * widths + n**3
        return "exact" if flops <= AUTO_EXACT_EVIDENCE_FLOPS else "posterior"

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
        if self.subset_of_weights == "all":
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
        cls = self.structure.laplace_class(self.subset_of_weights, self.pair_backend)
        if cls is None:
            return Laplace(
                model,
                "reward_modeling",
                subset_of_weights=self.subset_of_weights,
                hessian_structure=self.hessian_structure,
                **self.laplace_kwargs,
            )
        return cls(model, "reward_modeling", **self.laplace_kwargs)


def _auto_subset(model: nn.Module, first_x: Any, options: FitOptions) -> str:
    """``subset_of_weights="auto"``: all weights when every trainable parameter sits in a
    linear layer (``nn.Linear`` or transformers' ``Conv1D``) on the fast path (one call per
    forward) and there are at most
    :data:`AUTO_ALL_WEIGHTS_LIMIT` of them (and, for ``full``, their dense matrix fits
    :data:`FULL_MEMORY_LIMIT`); else the last layer. On real preference data the all-weights
    posterior is the one that improves calibration and tells unfamiliar items apart
    (docs/results/real_data.md); a last layer on learned features barely moves the MAP model."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    too_big = n > AUTO_ALL_WEIGHTS_LIMIT or (
        options.hessian_structure == "full" and n * n * params[0].element_size() > FULL_MEMORY_LIMIT
    )
    if too_big or not options.pair_backend:
        return "last_layer"
    recorder = LayerIORecorder(model, params)
    x = first_x[:1] if isinstance(first_x, torch.Tensor) else first_x
    fits = recorder.try_run(lambda: model(x)) is not None
    return "all" if fits else "last_layer"


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


def _check_prior_structure(subset: str, structure: str, prior_structure: str) -> None:
    """Refuse a prior structure laplace-torch's class for the subset and structure cannot take."""
    allowed = PRIOR_STRUCTURES[(subset, structure)]
    if prior_structure not in allowed:
        raise ValueError(
            f"`prior_structure={prior_structure!r}` is not available with "
            f"subset_of_weights={subset!r} and hessian_structure={structure!r} (laplace-torch's "
            f"classes for them take {' or '.join(repr(a) for a in allowed)}); use one of those."
        )


def _check_prior_kwargs(method: str, evidence: str, prior_kwargs: dict[str, Any]) -> None:
    """Refuse prior settings the chosen method would not use (nothing is silently dropped)."""
    allowed = PRIOR_SETTINGS[(method, evidence)]
    how = {
        "marglik": f"prior_precision='marglik', evidence={evidence!r}",
        "gridsearch": "prior_precision='gridsearch'",
        "fixed": "a fixed prior_precision",
    }[method]
    unused = sorted(k for k in prior_kwargs if k not in allowed)
    if unused:
        takes = ", ".join(f"`{k}`" for k in allowed) or "no optimizer settings"
        raise ValueError(
            f"{', '.join(f'`{k}`' for k in unused)} not used with {how}, which takes {takes}; "
            "drop them or choose the method they belong to."
        )
    structure = prior_kwargs.get("prior_structure", "scalar")
    if structure != "scalar" and (method != "marglik" or evidence != "posterior"):
        raise ValueError(
            f"`prior_structure={structure!r}` needs prior_precision='marglik' with "
            f"evidence='posterior'; {how} sets one scalar prior precision."
        )
