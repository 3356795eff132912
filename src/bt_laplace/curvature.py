"""Pair-correct curvature for laplace-torch: the exact Bradley-Terry GGN and its Kronecker form.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``P`` posterior parameters,
``in``/``out`` the input and output sizes of a linear layer.

For pairs with Bradley-Terry logit ``f = r(x_1) - r(x_0)`` and ``p = sigmoid(f)``, the
generalized Gauss-Newton matrix of the negative log likelihood is

.. math:: H = \\sum_{pairs} p (1 - p) (J_1 - J_0)^T (J_1 - J_0),

where ``J_i`` is the Jacobian of the reward of item ``i`` with respect to the parameters.
:class:`BradleyTerryGGN` computes it from per-item activations ``a`` and output gradients ``g``
of the linear layers (``J = g a^T`` per layer), without per-item Jacobians:

- ``diag`` and ``full``: exact.
- ``kron``: per weight, the *nearest Kronecker product* (Van Loan & Pitsianis, 1993) to the
  exact block ``sum_n w_n vec(g_1 a_1^T - g_0 a_0^T) vec(.)^T``, found by power iteration on
  the stored per-pair factors, started from the Kronecker factors with the item difference
  ``a_1 - a_0`` in the input factor. It is exact whenever the block is a Kronecker product,
  in particular for the last layer of a single-output network (``g_1 = g_0``). Bias blocks are
  kept exact and dense, so a head bias, which cancels in ``r(x_1) - r(x_0)``, gets curvature
  exactly zero. laplace-torch's KFAC instead treats the ``2B`` items as independent samples.

Whole-data Kronecker factors cannot be summed batch by batch, so the ``kron`` fit stores the
per-pair factors (``2 (in + out)`` numbers per pair and layer) and is finished once by
:class:`PairKronLaplace` / :class:`PairKronLLLaplace`, which are laplace-torch's
``KronLaplace`` / ``KronLLLaplace`` with only ``fit`` extended.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from laplace.baselaplace import KronLaplace
from laplace.curvature.curvature import CurvatureInterface
from laplace.lllaplace import KronLLLaplace
from laplace.utils import Kron
from torch import nn
from torch.utils.data import DataLoader

from bt_laplace._taps import LinearTaps, TapResult
from bt_laplace.bradley_terry import bradley_terry_weight

__all__ = ["BradleyTerryGGN", "PairKronLaplace", "PairKronLLLaplace", "nearest_kronecker_factors"]


def _pair_split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split per-item rows ``(2B, d)``, ordered pair by pair, into items 0 and 1 ``(B, d)``."""
    t = t.reshape(-1, 2, *t.shape[1:])
    return t[:, 0], t[:, 1]


class BradleyTerryGGN(CurvatureInterface):
    """Exact Bradley-Terry GGN backend for laplace-torch (``backend=BradleyTerryGGN``).

    Expects the model to map pairs ``(B, 2, *item)`` to logits ``(B, 2)`` (as
    :class:`~bt_laplace.PairwiseRewardModel` does) and labels ``y`` ``(B,)`` in ``{0, 1}``.

    Args:
        model: The pair model, or laplace-torch's ``FeatureExtractor`` around it (last layer).
        likelihood: ``"classification"`` (what laplace-torch passes for reward modeling).
        last_layer: Restrict to the last linear layer.
        subnetwork_indices: Not supported.
        dict_key_x: Forwarded to laplace-torch.
        dict_key_y: Forwarded to laplace-torch.
        kron_iterations: Power iterations of the nearest Kronecker product after its start.
            One reaches the nearest-Kronecker floor to four digits on the benchmark MLPs
            (docs/accuracy.md); raise it through ``backend_kwargs`` for more.
        kron_tol: Relative change of the input factor at which the power iteration stops.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        last_layer: bool = False,
        subnetwork_indices: torch.LongTensor | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        kron_iterations: int = 1,
        kron_tol: float = 1e-4,
    ) -> None:
        if subnetwork_indices is not None:
            raise NotImplementedError(
                "BradleyTerryGGN does not support subnetwork Laplace; use "
                "subset_of_weights='all' or 'last_layer'."
            )
        super().__init__(model, likelihood, last_layer, None, dict_key_x, dict_key_y)
        self.kron_iterations = kron_iterations
        self.kron_tol = kron_tol
        self._taps: LinearTaps | None = None
        self._kron_store: list[TapResult | torch.Tensor] = []

    @property
    def taps(self) -> LinearTaps:
        """Hook-based recorder over the posterior's linear layers (built on first use)."""
        if self._taps is None:
            self._taps = LinearTaps(self.model, list(self.params))
        return self._taps

    # ------------------------------------------------------------------ pair factors
    def _pair_pass(
        self, x: torch.Tensor | MutableMapping[str, Any], y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, TapResult | None, torch.Tensor | None]:
        """One pass over a batch of pairs.

        Returns ``(loss, weight (B,), taps result or None, dJ (B, P) or None)``.
        """
        if self.taps.supported:
            result = self.taps.run(lambda: self.model(x))
            logits = result.output.reshape(-1, 2)
            d_jac = None
        else:
            jac, logits = self.jacobians(x)  # (B, 2, P), (B, 2)
            if jac.ndim != 3 or jac.shape[1] != 2:
                raise ValueError(
                    f"the model must map pairs to logits (B, 2), got {tuple(logits.shape)}; "
                    "wrap the reward network in bt_laplace.PairwiseRewardModel."
                )
            result, d_jac = None, jac[:, 1] - jac[:, 0]
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise ValueError(
                f"the model must map pairs to logits (B, 2), got {tuple(logits.shape)}; "
                "wrap the reward network in bt_laplace.PairwiseRewardModel."
            )
        y = y.to(logits.device).long()
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        weight = bradley_terry_weight(logits[:, 1] - logits[:, 0])
        return loss.detach(), weight.detach(), result, d_jac

    def _pair_jacobian(self, result: TapResult) -> torch.Tensor:
        jac = self.taps.jacobian(result)
        j0, j1 = _pair_split(jac)
        return j1 - j0

    # ------------------------------------------------------------------ structures
    def full(self, x: Any, y: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact GGN ``(P, P)`` of a batch of pairs."""
        loss, w, result, d_jac = self._pair_pass(x, y)
        if d_jac is None:
            assert result is not None
            d_jac = self._pair_jacobian(result)
        return loss, (d_jac * w[:, None]).T @ d_jac

    def diag(self, x: Any, y: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact GGN diagonal ``(P,)`` of a batch of pairs."""
        loss, w, result, d_jac = self._pair_pass(x, y)
        if d_jac is not None:
            return loss, (w[:, None] * d_jac.square()).sum(0)
        assert result is not None
        blocks = []
        for slot in self.taps.slots:
            g0, g1 = _pair_split(result.grads[slot.layer])
            if slot.kind == "bias":
                blocks.append((w[:, None] * (g1 - g0).square()).sum(0))
                continue
            a0, a1 = _pair_split(result.acts[slot.layer])
            # sum_n w (g1 a1^T - g0 a0^T)^2, elementwise, as three matrix products
            d = (
                (w[:, None] * g1.square()).T @ a1.square()
                + (w[:, None] * g0.square()).T @ a0.square()
                - 2 * (w[:, None] * g1 * g0).T @ (a1 * a0)
            )
            blocks.append(d.clamp_min(0.0).flatten())
        return loss, torch.cat(blocks)

    def kron(self, x: Any, y: torch.Tensor, N: int, **kwargs: Any) -> tuple[torch.Tensor, Kron]:
        """Store the batch's pair factors; the Kronecker factors are built by ``finish_kron``.

        Returns the loss and an all-zero :class:`~laplace.utils.Kron` so that laplace-torch's
        batch loop can run unchanged.
        """
        if not self.taps.supported:
            raise NotImplementedError(
                f"hessian_structure='kron' needs every posterior parameter in an nn.Linear "
                f"layer, but {self.taps.reason}; use hessian_structure='diag' or 'full', or "
                "subset_of_weights='last_layer'."
            )
        loss, w, result, _ = self._pair_pass(x, y)
        assert result is not None
        self._kron_store.append(result)
        self._kron_store.append(w)
        p = self.params[0]
        return loss, Kron.init_from_model(self.params, p.device, p.dtype)

    def reset_kron(self) -> None:
        """Forget stored pair factors (called at the start of a fit)."""
        self._kron_store = []

    def finish_kron(self) -> Kron:
        """Kronecker factors over all stored pairs, in laplace-torch's ``Kron`` layout."""
        results = self._kron_store[0::2]
        weights = torch.cat(self._kron_store[1::2])  # type: ignore[arg-type]
        self._kron_store = []
        kfacs: list[Any] = []
        for slot in self.taps.slots:
            g = torch.cat([r.grads[slot.layer] for r in results])  # type: ignore[union-attr]
            g0, g1 = _pair_split(g)
            if slot.kind == "bias":
                dg = g1 - g0
                kfacs.append([(dg * weights[:, None]).T @ dg])
                continue
            a = torch.cat([r.acts[slot.layer] for r in results])  # type: ignore[union-attr]
            a0, a1 = _pair_split(a)
            kfacs.append(
                list(
                    nearest_kronecker_factors(
                        g0, g1, a0, a1, weights, iterations=self.kron_iterations, tol=self.kron_tol
                    )
                )
            )
        return Kron(kfacs)


def _pair_step(
    f: torch.Tensor,
    u0: torch.Tensor,
    u1: torch.Tensor,
    v0: torch.Tensor,
    v1: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """One side of the power iteration: ``sum_n Vhat_n C_n Vhat_n^T`` ``(e, e)``.

    ``C_n = w_n [[u1^T F u1, -u1^T F u0], [-u1^T F u0, u0^T F u0]]`` and
    ``Vhat_n = [v1_n, v0_n]``; two products with ``F`` and one ``(2B, e)`` Gram matrix.
    """
    u1f, u0f = u1 @ f, u0 @ f
    c11 = weight * (u1f * u1).sum(-1)
    c00 = weight * (u0f * u0).sum(-1)
    c10 = weight * (u1f * u0).sum(-1)
    v = torch.stack([v1, v0], dim=1)  # (B, 2, e)
    c = torch.stack([torch.stack([c11, -c10], -1), torch.stack([-c10, c00], -1)], 1)
    cv = torch.bmm(c, v)  # (B, 2, e)
    return v.reshape(-1, v.shape[-1]).T @ cv.reshape(-1, v.shape[-1])


def nearest_kronecker_factors(
    g0: torch.Tensor,
    g1: torch.Tensor,
    a0: torch.Tensor,
    a1: torch.Tensor,
    weight: torch.Tensor,
    *,
    iterations: int = 1,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest Kronecker product ``G (out, out) x A (in, in)`` to a pair GGN block.

    The exact block of a linear weight is
    ``H = sum_n w_n vec(g1_n a1_n^T - g0_n a0_n^T) vec(.)^T``, a sum of four Kronecker products
    per pair. Power iteration on Van Loan's rearrangement maximizes ``<H, G x A>``; each step
    is ``G <- sum_n w_n Ghat_n (Ahat_n^T A Ahat_n) Ghat_n^T`` with ``Ghat_n = [g1_n, -g0_n]``,
    ``Ahat_n = [a1_n, a0_n]`` (and the same with the roles swapped), which keeps both factors
    positive semi-definite. It starts from ``A = sum_n w_n (a1_n - a0_n)(a1_n - a0_n)^T``, the
    item difference in the input factor. A layer with one output (or one input) is a Kronecker
    product already and is returned exactly, without iterating.

    Args:
        g0: Output gradients of item 0 ``(B, out)``.
        g1: Output gradients of item 1 ``(B, out)``.
        a0: Input activations of item 0 ``(B, in)``.
        a1: Input activations of item 1 ``(B, in)``.
        weight: Pair weights ``p (1 - p)`` ``(B,)``.
        iterations: Maximum number of power iterations after the start.
        tol: Stop when the input factor changes by less than this (relative Frobenius).

    Returns:
        ``(G, A)`` with ``G x A`` the nearest Kronecker product to ``H`` in Frobenius norm.

    Example:
        >>> g = torch.ones(4, 1, dtype=torch.float64)
        >>> a0, a1 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
        >>> w = torch.full((4,), 0.25, dtype=torch.float64)
        >>> G, A = nearest_kronecker_factors(g, g, a0, a1, w)
        >>> torch.allclose(torch.kron(G, A), ((a1 - a0) * w[:, None]).T @ (a1 - a0))
        True
    """
    if g0.shape[1] == 1 or a0.shape[1] == 1:  # the block is a Kronecker product: exact
        d = g1[:, :, None] * a1[:, None, :] - g0[:, :, None] * a0[:, None, :]
        if g0.shape[1] == 1:
            d = d[:, 0]
            one = torch.ones(1, 1, dtype=d.dtype, device=d.device)
            return one, (d * weight[:, None]).T @ d
        d = d[:, :, 0]
        one = torch.ones(1, 1, dtype=d.dtype, device=d.device)
        return (d * weight[:, None]).T @ d, one
    diff = a1 - a0
    a_fac = (diff * weight[:, None]).T @ diff
    if not torch.any(a_fac != 0):
        a_fac = a1.T @ a1 + a0.T @ a0
    a_fac = a_fac / a_fac.norm()
    g_fac = _pair_step(a_fac, a0, a1, g0, g1, weight)
    for _ in range(iterations):
        g_norm = g_fac.norm()
        if g_norm == 0:
            break
        new_a = _pair_step(g_fac / g_norm, g0, g1, a0, a1, weight)
        new_a = new_a / new_a.norm()
        change = (new_a - a_fac).norm()
        a_fac = new_a
        g_fac = _pair_step(a_fac, a0, a1, g0, g1, weight)
        if change < tol:
            break
    # with ||A|| = 1, the step from A is the optimal G for that A: G x A is the projection of H
    return g_fac, a_fac


class _PairKronFit:
    """Extends laplace-torch's Kron ``fit``: one pass stores pair factors, then ``finish_kron``."""

    backend: BradleyTerryGGN
    H: Any
    H_facs: Any
    damping: bool

    def fit(
        self, train_loader: DataLoader, override: bool = True, progress_bar: bool = False
    ) -> None:
        if not override:
            raise NotImplementedError(
                "pair Kronecker factors are computed over the whole data set at once; "
                "`override=False` (online accumulation) is not supported."
            )
        if getattr(self, "_backend", None) is not None:  # last layer: built during fit
            self.backend.reset_kron()
        super().fit(train_loader, override=True, progress_bar=progress_bar)  # type: ignore[misc]
        self.H_facs = self.backend.finish_kron()
        self.H = self.H_facs.decompose(damping=self.damping)


class PairKronLaplace(_PairKronFit, KronLaplace):
    """laplace-torch's ``KronLaplace`` fitted with pair-correct Kronecker factors."""

    _key = ("bt_laplace", "all_kron")  # keeps laplace.Laplace()'s factory map unambiguous


class PairKronLLLaplace(_PairKronFit, KronLLLaplace):
    """laplace-torch's ``KronLLLaplace`` fitted with pair-correct Kronecker factors."""

    _key = ("bt_laplace", "last_layer_kron")
