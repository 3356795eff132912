"""How the prior precision is to be set: one checked value, :class:`PriorSetting`.

Every way of setting the prior precision and the optimizer settings each takes, stated once:

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
(:data:`PRIOR_STRUCTURES`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bt_laplace._checks import BTLaplaceWarning, check_choice
from bt_laplace.choices import Evidence, LinkApprox, PriorMethod
from bt_laplace.prior.kernel import (
    ggn_cost,
    item_form_cost,
    pair_form_cost,
    rows_per_pair,
    weight_width,
)

__all__ = [
    "PriorSetting",
    "PRIOR_SETTINGS",
    "PRIOR_KWARGS",
    "PRIOR_STRUCTURES",
    "AUTO_EXACT_EVIDENCE_FLOPS",
]

#: ``evidence="auto"`` takes the exact evidence up to this many floating-point operations
#: (about 5 s on 2 cores): up to ~4,600 pairs for an all-weights MLP, ~600,000 pairs for a
#: 385-parameter last layer
AUTO_EXACT_EVIDENCE_FLOPS = 1e11
#: the values ``prior_precision`` takes as a string
METHODS = (PriorMethod.AUTO.value, PriorMethod.MARGLIK.value, PriorMethod.GRIDSEARCH.value)
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
#: every keyword that goes to the prior, not to the Laplace class
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


@dataclass(frozen=True)
class PriorSetting:
    """How to set the prior precision of a fitted posterior, checked.

    Build with :meth:`from_arguments` (the arguments of
    :func:`~bt_laplace.fit_reward_posterior`) or :meth:`for_method` (those of
    :meth:`~bt_laplace.RewardPosterior.optimize_prior_precision`); apply with
    :func:`~bt_laplace.prior.set_prior_precision`.

    Attributes:
        method: ``MARGLIK``, ``GRIDSEARCH`` or ``FIXED`` (never ``AUTO``).
        value: The prior precision when ``method`` is ``FIXED``.
        evidence: Which evidence ``MARGLIK`` maximizes; ``AUTO`` is settled by
            :meth:`resolve_evidence` once the pairs are counted.
        link_approx: The pair probability that scores the grid search.
        settings: The method's optimizer settings (``n_steps``, ``grid_size``, ...).
        calibrate: After the exact evidence, scale the prior so that a block-diagonal
            all-weights posterior gives held-out items the exact posterior's variance
            (:mod:`bt_laplace.prior.calibration`).

    Example:
        >>> s = PriorSetting.from_arguments(prior_precision="auto", evidence="auto",
        ...                                 val_loader=None, link_approx="quadrature", kwargs={})
        >>> s.method, s.evidence, s.calibrate
        (<PriorMethod.MARGLIK: 'marglik'>, <Evidence.AUTO: 'auto'>, True)
    """

    method: PriorMethod
    value: float | None = None
    evidence: Evidence = Evidence.POSTERIOR
    link_approx: LinkApprox = LinkApprox.QUADRATURE
    settings: Mapping[str, Any] = field(default_factory=dict)
    calibrate: bool = False

    @classmethod
    def from_arguments(
        cls,
        *,
        prior_precision: str | float,
        evidence: str,
        val_loader: Any,
        link_approx: str,
        kwargs: dict[str, Any],
    ) -> PriorSetting:
        """Check ``prior_precision``, ``evidence``, ``val_loader`` and ``link_approx`` as
        :func:`~bt_laplace.fit_reward_posterior` takes them, and pop the prior's settings
        (:data:`PRIOR_KWARGS`) out of ``kwargs``; raises ``ValueError`` naming the argument
        and the fix."""
        value: float | None = None
        if isinstance(prior_precision, str):
            # "fixed" is what a number becomes, not a method to name
            method = PriorMethod(check_choice("prior_precision", prior_precision, METHODS))
            if method is PriorMethod.AUTO:
                method = PriorMethod.MARGLIK if val_loader is None else PriorMethod.GRIDSEARCH
            if method is PriorMethod.GRIDSEARCH and val_loader is None:
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
            method, value = PriorMethod.FIXED, float(prior_precision)
        chosen = Evidence.check("evidence", evidence)
        if chosen is Evidence.AUTO and method is not PriorMethod.MARGLIK:
            chosen = Evidence.POSTERIOR  # the evidence is only used by marglik
        if chosen is Evidence.EXACT and method is not PriorMethod.MARGLIK:
            raise ValueError(
                f"`evidence='exact'` chooses the evidence that prior_precision='marglik' "
                f"maximizes, but prior_precision={prior_precision!r}; use "
                "prior_precision='marglik' or leave evidence at 'posterior'."
            )
        if val_loader is not None and method is not PriorMethod.GRIDSEARCH:
            warnings.warn(
                "`val_loader` is only used with prior_precision='gridsearch'; it is ignored.",
                BTLaplaceWarning,
                stacklevel=4,
            )
        link = LinkApprox.check("link_approx", link_approx)
        settings = {k: kwargs.pop(k) for k in PRIOR_KWARGS if k in kwargs}
        if chosen is Evidence.AUTO and any(
            k != "prior_structure" or v != "scalar" for k, v in settings.items()
        ):
            chosen = Evidence.POSTERIOR  # optimizer settings or a vector prior: laplace-torch's
        setting = cls(method, value, chosen, link, settings)
        setting.check_settings()
        calibrate = (
            prior_precision == "auto" and evidence == "auto" and val_loader is None
        ) and not settings
        return replace(setting, calibrate=calibrate)

    @classmethod
    def for_method(
        cls,
        method: str,
        *,
        has_train: bool,
        has_val: bool,
        link_approx: str,
        settings: dict[str, Any],
    ) -> PriorSetting:
        """The setting of :meth:`~bt_laplace.RewardPosterior.optimize_prior_precision`:
        ``"gridsearch"`` (needs validation pairs: ``has_val``) or ``"marglik"`` (with the
        exact evidence when given the training pairs: ``has_train``)."""
        if method == PriorMethod.MARGLIK and has_val:
            raise ValueError(
                "`val_loader` is only used by method='gridsearch'; drop it, or pass "
                "method='gridsearch'."
            )
        if method == PriorMethod.GRIDSEARCH and has_train:
            raise ValueError(
                "`train_loader` is only used by method='marglik' (the exact evidence); drop "
                "it, or pass method='marglik'."
            )
        if method not in (PriorMethod.GRIDSEARCH, PriorMethod.MARGLIK):
            raise ValueError(
                f"`method` must be 'gridsearch' or 'marglik', got {method!r}; to set a number, "
                "assign it: post.laplace.prior_precision = value."
            )
        unknown = sorted(set(settings) - set(PRIOR_KWARGS))
        if unknown:
            raise ValueError(
                f"optimize_prior_precision got unknown settings {unknown}; the prior methods "
                f"take {list(PRIOR_KWARGS)}."
            )
        if method == PriorMethod.GRIDSEARCH and not has_val:
            raise ValueError(
                "`prior_precision='gridsearch'` needs `val_loader`, a DataLoader of "
                "validation pairs; pass one or use method='marglik'."
            )
        evidence = Evidence.EXACT if has_train else Evidence.POSTERIOR
        link = LinkApprox.check("link_approx", link_approx)
        setting = cls(PriorMethod.check("method", method), None, evidence, link, dict(settings))
        setting.check_settings()
        return setting

    @property
    def prior_structure(self) -> str:
        """``"scalar"``, ``"layerwise"`` or ``"diag"``."""
        return str(self.settings.get("prior_structure", "scalar"))

    def check_settings(self) -> None:
        """Refuse settings the method would not use (nothing is silently dropped)."""
        method = self.method
        evidence = Evidence.POSTERIOR if self.evidence is Evidence.AUTO else self.evidence
        allowed = PRIOR_SETTINGS[(method, evidence)]
        how = {
            PriorMethod.MARGLIK: f"prior_precision='marglik', evidence={evidence.value!r}",
            PriorMethod.GRIDSEARCH: "prior_precision='gridsearch'",
            PriorMethod.FIXED: "a fixed prior_precision",
        }[method]
        unused = sorted(k for k in self.settings if k not in allowed)
        if unused:
            takes = ", ".join(f"`{k}`" for k in allowed) or "no optimizer settings"
            raise ValueError(
                f"{', '.join(f'`{k}`' for k in unused)} not used with {how}, which takes "
                f"{takes}; drop them or choose the method they belong to."
            )
        structure = self.prior_structure
        if structure != "scalar" and (
            method is not PriorMethod.MARGLIK or evidence is not Evidence.POSTERIOR
        ):
            raise ValueError(
                f"`prior_structure={structure!r}` needs prior_precision='marglik' with "
                f"evidence='posterior'; {how} sets one scalar prior precision."
            )

    def check_structure(self, subset_of_weights: str, hessian_structure: str) -> None:
        """Refuse a prior structure laplace-torch's class for the subset and structure
        cannot take."""
        allowed = PRIOR_STRUCTURES[(str(subset_of_weights), str(hessian_structure))]
        if self.prior_structure not in allowed:
            raise ValueError(
                f"`prior_structure={self.prior_structure!r}` is not available with "
                f"subset_of_weights={str(subset_of_weights)!r} and "
                f"hessian_structure={str(hessian_structure)!r} (laplace-torch's classes for "
                f"them take {' or '.join(repr(a) for a in allowed)}); use one of those."
            )

    def resolve_evidence(
        self, laplace: Any, pair_backend: bool, n_items: int | None = None
    ) -> Evidence:
        """``evidence="auto"`` once the fit has counted the pairs: ``EXACT`` when its
        estimated cost is at most :data:`AUTO_EXACT_EVIDENCE_FLOPS` and the curvature is
        bt_laplace's pair backend, else ``POSTERIOR``; with ``n_items``, the number of
        distinct items the pairs compare, the cost through their kernel counts too
        (:mod:`bt_laplace.prior.kernel`). With TRL's centering term the pair kernel has
        two rows a pair."""
        if self.evidence is not Evidence.AUTO:
            return self.evidence
        if not pair_backend:  # another backend: laplace-torch's procedure, as it does
            return Evidence.POSTERIOR
        n, p = int(laplace.n_data) * rows_per_pair(laplace), int(laplace.n_params)
        widths = weight_width(laplace)
        flops: float
        if p <= n:  # P x P GGN from N rows, then its eigendecomposition
            flops = ggn_cost(n, p)
        else:  # N x N pair kernel from the items' Gram products, then its eigendecomposition
            flops = n * n * widths + n**3
        if n_items is not None:  # through the M x M kernel of the items
            flops = min(flops, item_form_cost(n_items, widths))
            if p > n:
                flops = min(flops, pair_form_cost(n, n_items, widths))
        return Evidence.EXACT if flops <= AUTO_EXACT_EVIDENCE_FLOPS else Evidence.POSTERIOR
