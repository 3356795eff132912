"""Linearized (GLM) predictive of a reward posterior without per-item Jacobians.

Shape legend: ``N`` items, ``B`` pairs, ``2`` the two items of a pair, ``S`` samples,
``P`` posterior parameters, ``in``/``out`` the sizes of a linear layer.

Under the linearized Laplace posterior ``theta ~ N(theta*, Sigma)`` the reward of an item is
Gaussian with mean ``r(x; theta*)`` and variance ``J(x) Sigma J(x)^T``, and two items have
covariance ``J(x) Sigma J(x')^T``. For a single-output reward with linear layers,
``J = [g a^T, g]`` per layer, so with the posterior of each layer in its own basis the
quadratic form collapses to matrix products of ``a`` and ``g``:

- diagonal posterior with variances ``V (out, in)``:
  ``J Sigma J'^T = sum_layers (g * g')^T V (a * a')``;
- Kronecker posterior with eigenpairs ``(Q_G, l_G)``, ``(Q_A, l_A)`` and prior ``delta``:
  ``sum_layers (gh * gh')^T M (ah * ah')`` with ``gh = Q_G^T g``, ``ah = Q_A^T a`` and
  ``M = 1 / (l_G l_A^T + delta)``;
- full posterior: ``J Sigma J'^T`` with ``J`` rebuilt from ``a`` and ``g``.

Each costs one forward and one backward pass plus ``O(N (in + out)^2)``; memory is linear in
``N``. Models whose posterior parameters are not all in ``nn.Linear`` layers fall back to
laplace-torch's Jacobians.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from laplace.baselaplace import DiagLaplace, FullLaplace, KronLaplace, ParametricLaplace
from laplace.lllaplace import LLLaplace

from bt_laplace._taps import (
    LinearTaps,
    TapResult,
    backend_jacobians,
    bias_jacobian,
    is_sequence,
    item_chunks,
    pair_split,
    weight_jacobian,
)

__all__ = [
    "posterior_parameters",
    "PosteriorQuadraticForm",
    "item_moments",
    "pair_taps",
    "pair_moments_from_taps",
    "pair_moments",
    "relative_moments",
    "linearized_samples",
]


def posterior_parameters(laplace: ParametricLaplace) -> list[torch.Tensor]:
    """The parameter tensors the posterior is over, in its order (last layer or all)."""
    if isinstance(laplace, LLLaplace):
        last_layer: Any = laplace.model.last_layer
        return [p for p in last_layer.parameters() if p.requires_grad]
    return list(laplace.params)


class PosteriorQuadraticForm:
    """Cross-covariances ``J(x) Sigma J(x')^T`` row by row, from taps, for one fitted posterior.

    Args:
        laplace: A fitted laplace-torch ``DiagLaplace``, ``KronLaplace`` or ``FullLaplace``
            (all weights or last layer).
    """

    def __init__(self, laplace: ParametricLaplace) -> None:
        self.laplace = laplace
        self.taps = LinearTaps(laplace.model, posterior_parameters(laplace))
        self.last_layer = isinstance(laplace, LLLaplace)
        self._cache: tuple[Any, ...] | None = None
        self._cache_key: Any = None
        self._cast: tuple[Any, torch.dtype, Any] | None = None

    def _posterior(self) -> tuple[Any, ...]:
        """Per-parameter posterior pieces, recomputed when the curvature, prior or temperature
        change (the key holds the curvature object itself, so it cannot be confused with a
        later one)."""
        la = self.laplace
        key = (la.H, la.prior_precision.detach().clone(), float(la.temperature))
        old = self._cache_key
        if self._cache is not None and old is not None and old[0] is key[0] and old[2] == key[2]:
            if torch.equal(old[1], key[1]):
                return self._cache
        if isinstance(la, DiagLaplace):
            var = la.posterior_variance
            pieces: tuple[Any, ...] = ("diag", list(var.split([s.numel for s in self.taps.slots])))
        elif isinstance(la, KronLaplace):
            prec = la.posterior_precision
            blocks = []
            for qs, ls, delta in zip(prec.eigenvectors, prec.eigenvalues, prec.deltas, strict=True):
                if len(ls) == 1:
                    blocks.append((qs[0], 1.0 / (ls[0] + delta)))
                else:
                    if prec.damping:
                        s = torch.sqrt(delta)
                        m = 1.0 / torch.outer(ls[0] + s, ls[1] + s)
                    else:
                        m = 1.0 / (torch.outer(ls[0], ls[1]) + delta)
                    blocks.append((qs[0], qs[1], m))
            pieces = ("kron", blocks)
        elif isinstance(la, FullLaplace):
            pieces = ("full", la.posterior_covariance)
        else:
            raise NotImplementedError(
                f"fast prediction supports DiagLaplace, KronLaplace and FullLaplace, got "
                f"{type(la).__name__}."
            )
        self._cache, self._cache_key = pieces, key
        return pieces

    def _posterior_as(self, dtype: torch.dtype) -> tuple[Any, ...]:
        """:meth:`_posterior` with its tensors in ``dtype`` (cached per fitted posterior)."""
        kind, post = self._posterior()
        if dtype == self.laplace._dtype:
            return kind, post
        if self._cast is not None and self._cast[0] is post and self._cast[1] == dtype:
            return kind, self._cast[2]
        cast = _cast(post, dtype)
        self._cast = (post, dtype, cast)
        return kind, cast

    def cross(self, left: TapResult, right: TapResult) -> torch.Tensor:
        """Row-wise ``J(x_n) Sigma J(x'_n)^T`` ``(N,)`` for taps of two aligned item batches."""
        if left is right:
            return self.crosses([left], [(0, 0)])[0]
        return self.crosses([left, right], [(0, 1)])[0]

    def crosses(self, results: list[TapResult], pairs: list[tuple[int, int]]) -> list[torch.Tensor]:
        """:meth:`cross` for several ``(i, j)`` pairs of ``results``, sharing the per-result work
        (projections onto the Kronecker eigenbases, ``J Sigma`` for ``full``)."""
        kind, post = self._posterior_as(results[0].output.dtype)
        if kind == "full":
            jac = [self.taps.jacobian(r) for r in results]
            jac_sigma = {i: jac[i] @ post for i in {i for i, _ in pairs}}
            return [(jac_sigma[i] * jac[j]).sum(-1) for i, j in pairs]
        totals = [torch.zeros_like(results[0].output) for _ in pairs]
        for slot, piece in zip(self.taps.slots, post, strict=True):
            g = [r.grads[slot.layer] for r in results]
            a = [r.acts[slot.layer] for r in results]
            if kind == "kron":  # rotate into the eigenbases once per result
                g = [gi @ piece[0] for gi in g]
                if slot.kind == "weight":
                    a = [ai @ piece[1] for ai in a]
            if slot.kind == "bias":
                g = [bias_jacobian(gi) for gi in g]
            elif is_sequence(a[0]):  # per-item Jacobian blocks sum_t g_t a_t^T, chunked
                m = piece[2] if kind == "kron" else piece.reshape(g[0].shape[-1], -1)
                for k, (i, j) in enumerate(pairs):
                    totals[k] = totals[k] + _block_products(g[i], a[i], g[j], a[j], m)
                continue
            for k, (i, j) in enumerate(pairs):
                gg = g[i].square() if i == j else g[i] * g[j]
                if slot.kind == "bias":  # kron: (Q, 1 / (l + delta)); diag: variances
                    inv = piece[1] if kind == "kron" else piece
                    totals[k] = totals[k] + (gg * inv).sum(-1)
                    continue
                aa = a[i].square() if i == j else a[i] * a[j]
                m = piece[2] if kind == "kron" else piece.reshape(gg.shape[1], aa.shape[1])
                totals[k] = totals[k] + ((gg @ m) * aa).sum(-1)
        return totals

    def mean_jacobian(self, results: list[TapResult]) -> list[torch.Tensor]:
        """Mean Jacobian over all items of ``results``, per posterior parameter tensor:
        ``mean g a^T`` ``(out, in)`` for a weight, ``mean g`` ``(out,)`` for a bias."""
        n = sum(r.output.shape[0] for r in results)
        dense: list[torch.Tensor] = []
        for slot in self.taps.slots:
            g = torch.cat([r.grads[slot.layer] for r in results])
            if slot.kind == "bias":
                dense.append(bias_jacobian(g).sum(0) / n)
            else:  # sum over items (and positions) of g a^T
                a = torch.cat([r.acts[slot.layer] for r in results])
                dense.append(g.reshape(-1, g.shape[-1]).T @ a.reshape(-1, a.shape[-1]) / n)
        return dense

    def dense_cross(
        self, result: TapResult, dense: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``J(x_n) Sigma Jbar^T`` ``(N,)`` and ``Jbar Sigma Jbar^T`` (scalar) for a dense
        ``Jbar`` given per parameter tensor (as from :meth:`mean_jacobian`)."""
        kind, post = self._posterior_as(result.output.dtype)
        if kind == "full":
            jbar = torch.cat([d.reshape(-1) for d in dense])
            sigma_jbar = post @ jbar
            return self.taps.jacobian(result) @ sigma_jbar, jbar @ sigma_jbar
        cross = torch.zeros_like(result.output)
        quad = torch.zeros((), dtype=cross.dtype, device=cross.device)
        for slot, piece, d in zip(self.taps.slots, post, dense, strict=True):
            g = result.grads[slot.layer]
            if kind == "kron":  # Sigma is diagonal, M, in the eigenbases: rotate g, a and Jbar
                g = g @ piece[0]
                if slot.kind == "bias":
                    d = piece[0].T @ d
                    weighted = piece[1] * d
                else:
                    d = piece[0].T @ d @ piece[1]
                    weighted = piece[2] * d
            else:  # diag: Sigma is the elementwise variances V
                weighted = piece.reshape(d.shape) * d
            quad = quad + (weighted * d).sum()
            if slot.kind == "bias":
                cross = cross + bias_jacobian(g) @ weighted
                continue
            a = result.acts[slot.layer]
            if kind == "kron":
                a = a @ piece[1]
            if is_sequence(a):
                cross = cross + _block_products(g, a, None, None, weighted)
            else:
                cross = cross + ((g @ weighted) * a).sum(-1)
        return cross, quad


def _block_products(
    g: torch.Tensor,
    a: torch.Tensor,
    g2: torch.Tensor | None,
    a2: torch.Tensor | None,
    m: torch.Tensor,
) -> torch.Tensor:
    """``sum_{o,i} M_n[o, i] M2_n[o, i] m[o, i]`` ``(N,)`` for per-item Jacobian blocks
    ``M = sum_t g_t a_t^T`` of sequences (``g2 = None``: ``M2`` is all ones, so this is
    ``<M_n, m>``), a few items at a time."""
    out = torch.empty(g.shape[0], dtype=m.dtype, device=m.device)
    for sl in item_chunks(g.shape[0], m.numel()):
        blocks = weight_jacobian(g[sl], a[sl])
        if g2 is not None and a2 is not None:
            blocks = blocks * (blocks if g2 is g and a2 is a else weight_jacobian(g2[sl], a2[sl]))
        out[sl] = (blocks * m).sum((1, 2))
    return out


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(o, dtype) for o in obj)
    return obj


def _double(result: TapResult) -> TapResult:
    return TapResult(
        result.output.double(),
        [a.double() for a in result.acts],
        [g.double() for g in result.grads],
    )


def relative_moments(
    form: PosteriorQuadraticForm, xs: list[torch.Tensor], refs: list[torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance ``(N,)`` of ``r(x_n) - mean_m r(ref_m)``, items and references given
    in batches (``refs=None``: the items themselves, one pass); the reward offset that pairs
    cannot identify cancels."""
    la = form.laplace
    group = refs is None
    refs = xs if refs is None else refs
    ref_taps = [form.taps.try_run(partial(la.model, r)) for r in refs]
    if all(t is not None for t in ref_taps):
        # in float64: the offset variance shared by items and reference, often much larger
        # than what is left, cancels in the sum below
        taps_ref = [_double(t) for t in ref_taps if t is not None]
        dense = form.mean_jacobian(taps_ref)
        ref_mean = torch.cat([t.output for t in taps_ref]).mean()
        means, variances = [], []
        for i, x in enumerate(xs):
            res = taps_ref[i] if group else form.taps.try_run(partial(la.model, x))
            if res is None:
                break
            res = _double(res)
            cross, quad = form.dense_cross(res, dense)
            means.append(res.output - ref_mean)
            variances.append((form.cross(res, res) - 2 * cross + quad).clamp_min(0.0))
        else:
            dtype = la._dtype
            return torch.cat(means).to(dtype), torch.cat(variances).to(dtype)
    # models outside the fast path: laplace-torch's Jacobians, Jbar stacked as a second output
    jac_ref, f_ref = zip(
        *(backend_jacobians(la.backend, r, last_layer=form.last_layer) for r in refs),
        strict=True,
    )
    jbar = torch.cat(jac_ref).reshape(-1, jac_ref[0].shape[-1]).mean(0)
    ref_mean = torch.cat(f_ref).mean()
    means, variances = [], []
    for x in xs:
        jac, f = backend_jacobians(la.backend, x, last_layer=form.last_layer)
        jac = jac.reshape(jac.shape[0], -1)
        both = torch.stack([jac, jbar.expand_as(jac)], dim=1)  # (N, 2, P)
        cov = la.functional_variance(both).detach()  # (N, 2, 2)
        means.append(f.reshape(-1) - ref_mean)
        variances.append((cov[:, 0, 0] - 2 * cov[:, 0, 1] + cov[:, 1, 1]).clamp_min(0.0))
    return torch.cat(means), torch.cat(variances)


def _split_items(result: TapResult) -> tuple[TapResult, TapResult]:
    """Taps of ``2B`` interleaved items -> taps of items 0 and items 1 of each pair."""
    out0, out1 = pair_split(result.output)
    acts, grads = [pair_split(a) for a in result.acts], [pair_split(g) for g in result.grads]
    return (
        TapResult(out0, [a[0] for a in acts], [g[0] for g in grads]),
        TapResult(out1, [a[1] for a in acts], [g[1] for g in grads]),
    )


def item_moments(
    form: PosteriorQuadraticForm, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance ``(N,)`` of the reward of items ``x`` ``(N, *item)``."""
    la = form.laplace
    res = form.taps.try_run(lambda: la.model(x))
    if res is not None:
        return res.output, form.cross(res, res).clamp_min(0.0)
    jac, f = backend_jacobians(la.backend, x, last_layer=form.last_layer)
    return f.reshape(-1), la.functional_variance(jac).reshape(-1).detach()


def pair_taps(form: PosteriorQuadraticForm, x: torch.Tensor) -> tuple[TapResult, TapResult] | None:
    """Taps of items 0 and items 1 of pairs ``x`` ``(B, 2, *item)`` (one pass over ``2B``
    items), or None when the model does not fit the fast path."""
    res = form.taps.try_run(lambda: form.laplace.model(x))
    return None if res is None else _split_items(res)


def pair_moments_from_taps(
    form: PosteriorQuadraticForm, r0: TapResult, r1: TapResult
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Means ``(B, 2)``, variances ``(B, 2)`` and covariance ``(B,)`` from pair taps."""
    v0, v1, cov = form.crosses([r0, r1], [(0, 0), (1, 1), (0, 1)])
    var = torch.stack([v0, v1], dim=1).clamp_min(0.0)
    return torch.stack([r0.output, r1.output], dim=1), var, cov


def pair_moments(
    form: PosteriorQuadraticForm, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Means ``(B, 2)``, variances ``(B, 2)`` and covariance ``(B,)`` of pair rewards."""
    la = form.laplace
    taps = pair_taps(form, x)
    if taps is not None:
        return pair_moments_from_taps(form, *taps)
    jac, f = backend_jacobians(la.backend, x, last_layer=form.last_layer)  # (B, 2, P)
    cov = la.functional_variance(jac).detach()  # (B, 2, 2)
    return f, cov.diagonal(dim1=1, dim2=2), cov[:, 0, 1]


def linearized_samples(
    form: PosteriorQuadraticForm,
    x: torch.Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Joint samples ``(S, N)`` of the linearized rewards ``r(x) + J(x) (theta - theta*)``."""
    la = form.laplace
    delta = la.sample(n_samples, generator=generator) - la.mean  # (S, P)
    res = form.taps.try_run(lambda: la.model(x))
    if res is not None:
        out = res.output.expand(n_samples, -1).clone()
        for slot, d in zip(
            form.taps.slots, delta.split([s.numel for s in form.taps.slots], 1), strict=True
        ):
            g, a = res.grads[slot.layer], res.acts[slot.layer]
            if slot.kind == "bias":
                out += d @ bias_jacobian(g).T
            else:
                dw = d.reshape(n_samples, g.shape[-1], a.shape[-1])
                if is_sequence(a):
                    out += torch.einsum("nlo,soi,nli->sn", g, dw, a)
                else:
                    out += torch.einsum("no,soi,ni->sn", g, dw, a)
        return out
    jac, f = backend_jacobians(la.backend, x, last_layer=form.last_layer)
    return f.reshape(1, -1) + delta @ jac.reshape(jac.shape[0], -1).T
