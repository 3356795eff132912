"""Linearized (GLM) predictive of a reward posterior without per-item Jacobians.

Shape legend: ``N`` items, ``B`` pairs, ``2`` the two items of a pair, ``M`` reference items,
``S`` samples, ``P`` posterior parameters.

Under the linearized Laplace posterior ``theta ~ N(theta*, Sigma)`` the reward of an item is
Gaussian with mean ``r(x; theta*)`` and variance ``J(x) Sigma J(x)^T``, and two items have
covariance ``J(x) Sigma J(x')^T``. :class:`Predictive` takes one forward and one backward
pass per batch to get the per-item Jacobians as layer inputs and output gradients (or, for
models outside that fast path, laplace-torch's per-item Jacobians: the one place that
decides) and hands them to the posterior's structure
(:mod:`bt_laplace.structures`), which turns them into covariances. Each query costs one
forward and one backward pass plus ``O(N (in + out)^2)``; memory is linear in ``N``.
"""

from __future__ import annotations

from typing import Any

import torch
from laplace.baselaplace import ParametricLaplace

from bt_laplace._checks import n_rows
from bt_laplace._layer_io import LayerIO, backend_jacobians, pair_split
from bt_laplace.inputs import split_rows, take_rows
from bt_laplace.structures import (
    DenseJacobians,
    Jacobians,
    PosteriorStructure,
    group_means,
    group_order,
    structure_for,
)

__all__ = ["CANCELLATION", "Predictive"]

#: the fraction of ``v0 + v1`` a pair-difference variance may keep before it is recomputed in
#: float64 (float32 keeps about 7 digits; below 1e-2 fewer than 5 would be left)
CANCELLATION = 1e-2


class Predictive:
    """The linearized predictive of one fitted laplace-torch posterior.

    Args:
        laplace: A fitted laplace-torch ``DiagLaplace``, ``KronLaplace`` or ``FullLaplace``
            (all weights or last layer).
    """

    def __init__(self, laplace: ParametricLaplace) -> None:
        self.laplace = laplace
        self.structure: PosteriorStructure = structure_for(laplace)

    # ------------------------------------------------------------------ Jacobians
    def jacobians(self, x: Any, *, pairs: bool = False) -> list[Jacobians]:
        """Per-item Jacobians of the rewards of items ``(N, *item)`` (one entry) or of the two
        items of pairs ``(B, 2, *item)`` (``pairs=True``; two entries, items 0 and items 1),
        from one pass: layer I/O where the model fits the fast path, else laplace-torch's."""
        la, structure = self.laplace, self.structure
        res = structure.recorder.try_run(lambda: la.model(x))
        if res is not None:
            return list(_split_items(res)) if pairs else [res]
        jac, f = backend_jacobians(la.backend, x, last_layer=structure.last_layer)  # (N, K, P)
        return [DenseJacobians(f[:, k], jac[:, k]) for k in range(jac.shape[1])]

    # ------------------------------------------------------------------ moments
    def item_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``(N,)`` of the reward of items ``x`` ``(N, *item)``."""
        (jac,) = self.jacobians(x)
        return jac.output, self.structure.cross(jac, jac).clamp_min(0.0)

    def pair_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means ``(B, 2)``, variances ``(B, 2)`` and covariance ``(B,)`` of pair rewards."""
        j0, j1 = self.jacobians(x, pairs=True)
        return self.pair_moments_from(j0, j1)

    def pair_moments_from(
        self, j0: Jacobians, j1: Jacobians
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`pair_moments` from the Jacobians of items 0 and items 1 of the pairs."""
        v0, v1, cov = self.structure.crosses([j0, j1], [(0, 0), (1, 1), (0, 1)])
        var = torch.stack([v0, v1], dim=1).clamp_min(0.0)
        return torch.stack([j0.output, j1.output], dim=1), var, cov

    def difference_moments(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``(B,)`` of ``r(x_1) - r(x_0)`` for pairs ``(B, 2, *item)``."""
        return self.difference_moments_from(*self.jacobians(x, pairs=True))

    def difference_moments_from(
        self, j0: Jacobians, j1: Jacobians
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`difference_moments` from the Jacobians of items 0 and items 1, in float64.

        The variance ``v0 + v1 - 2 cov`` cancels when the two items are alike or the prior is
        weak, so it is computed where it cannot: from ``J1 - J0`` on laplace-torch's path; on
        the fast path in the model's precision first, then again in float64 for the pairs
        where more than :data:`CANCELLATION` of ``v0 + v1`` cancelled (all of them for a
        float64 model, none for most pairs of a float32 one).
        """
        if isinstance(j0, DenseJacobians) and isinstance(j1, DenseJacobians):
            d = DenseJacobians(j1.output - j0.output, j1.jac - j0.jac)
            return d.output.double(), self.structure.cross(d, d).clamp_min(0.0).double()
        assert isinstance(j0, LayerIO) and isinstance(j1, LayerIO)
        v0, v1, cov = self.structure.crosses([j0, j1], [(0, 0), (1, 1), (0, 1)])
        mean, var = j1.output - j0.output, v0 + v1 - 2 * cov
        if var.dtype != torch.float64:
            rows = (var <= CANCELLATION * (v0.abs() + v1.abs())).nonzero().flatten()
            mean, var = mean.double(), var.double()
            if rows.numel():
                m64, v64 = self.difference_moments_from(
                    _double(_rows(j0, rows)), _double(_rows(j1, rows))
                )
                mean[rows], var[rows] = m64, v64
        return mean, var.clamp_min(0.0)

    def relative_moments(
        self, xs: list[Any], refs: list[Any] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``(N,)`` of ``r(x_n) - mean_m r(ref_m)``, items and references
        given in batches (``refs=None``: the items themselves); the reward offset that pairs
        cannot identify cancels.

        On the fast path the sums run in float64 (the offset variance shared by items and
        reference, often much larger than what is left, cancels in them), and memory stays
        within one batch whatever the size of the reference: a pass over it gives its mean
        Jacobian and mean reward, a second over the items their moments (one pass in all when
        the items are their own reference in a single batch).
        """
        structure = self.structure
        ref_batches = xs if refs is None else refs
        reuse = refs is None and len(xs) == 1
        sums: list[torch.Tensor] | None = None
        total: torch.Tensor | float = 0.0
        count, first = 0, None
        for r in ref_batches:
            jac = self.jacobians(r)[0]
            if not isinstance(jac, LayerIO):
                return self._relative_dense(xs, ref_batches)
            jac = _double(jac)
            part = structure.jacobian_sum([jac])
            sums = part if sums is None else [a + b for a, b in zip(sums, part, strict=True)]
            total, count = total + jac.output.sum(), count + jac.output.shape[0]
            first = jac if reuse else None
        assert sums is not None
        dense, ref_mean = [t / count for t in sums], total / count
        dtype = self.laplace._dtype
        n = sum(n_rows(x) for x in xs)  # results written in place: nothing per batch survives
        means = torch.empty(n, dtype=dtype, device=self.laplace._device)
        variances = torch.empty_like(means)
        start = 0
        for x in xs:
            jac = first if first is not None else self.jacobians(x)[0]
            if not isinstance(jac, LayerIO):  # the fast path gave out on this batch
                return self._relative_dense(xs, ref_batches)
            jac = jac if jac is first else _double(jac)
            rows = slice(start, start + jac.output.shape[0])
            means[rows], variances[rows] = self._relative_to(jac, dense, ref_mean)
            start = rows.stop
        return means, variances

    def grouped_relative_moments(
        self, x: Any, index: torch.Tensor, n_groups: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`relative_moments` of each item relative to the items of its own group
        (``index`` ``(N,)`` into ``n_groups``, every group non-empty), from one pass over ``x``
        (one batch) and batched products per parameter tensor
        (:meth:`~bt_laplace.structures.PosteriorStructure.group_variance`, whose cancelling
        sums run in float64); None off the fast path. The items go through the model in the
        order the padded groups lay them out (:func:`~bt_laplace.structures.group_order`), so
        that no layer's sides are gathered."""
        index = index.to(self.laplace._device)
        order = group_order(index, n_groups)
        (jac,) = self.jacobians(take_rows(x, order))
        if not isinstance(jac, LayerIO):
            return None
        index = index[order].to(jac.output.device)
        counts = torch.bincount(index, minlength=n_groups)
        output = jac.output.double()
        dtype = self.laplace._dtype
        mean = torch.empty_like(output, dtype=dtype)
        variance = torch.empty_like(mean)
        mean[order] = (output - group_means(output, index, counts)[index]).to(dtype)
        variance[order] = (
            self.structure.group_variance(jac, index, n_groups).clamp_min(0.0).to(dtype)
        )
        return mean, variance

    def relative_moments_by_group(
        self, x: Any, index: torch.Tensor, n_groups: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`relative_moments` of each item of ``x`` ``(N, *item)`` relative to the items
        of its own group (``index`` ``(N,)`` into ``n_groups``).

        On the fast path whole groups go together into batches of at most ``batch_size``
        items, each batch one :meth:`grouped_relative_moments`; a group larger than a batch
        gets :meth:`relative_moments` over its items in batches (a pass for its mean Jacobian,
        one for its items). Off the fast path every group gets :meth:`relative_moments`.
        """
        dtype, device = self.laplace._dtype, self.laplace._device
        n = n_rows(x)
        mean = torch.empty(n, dtype=dtype, device=device)
        variance = torch.empty_like(mean)
        index = index.to(device)
        counts = torch.bincount(index, minlength=n_groups)
        for rows, local, k in _group_batches(index, counts, batch_size):
            moments = self.grouped_relative_moments(take_rows(x, rows), local, k)
            if moments is None:  # off the fast path: group by group
                return self._relative_per_group(x, index, n_groups, batch_size)
            mean[rows], variance[rows] = moments
        for g in (counts > batch_size).nonzero().flatten().tolist():  # groups beyond a batch
            rows = (index == g).nonzero().flatten()
            m, v = self.relative_moments(split_rows(take_rows(x, rows), batch_size), None)
            mean[rows], variance[rows] = m.to(dtype), v.to(dtype)
        return mean, variance

    def _relative_per_group(
        self, x: Any, index: torch.Tensor, n_groups: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`relative_moments_by_group` one group at a time (models off the fast path)."""
        dtype, device = self.laplace._dtype, self.laplace._device
        mean = torch.empty(n_rows(x), dtype=dtype, device=device)
        variance = torch.empty_like(mean)
        for g in range(n_groups):
            rows = (index == g).nonzero().flatten()
            members = take_rows(x, rows.to(device))
            m, v = self.relative_moments(split_rows(members, batch_size), None)
            mean[rows], variance[rows] = m.to(dtype), v.to(dtype)
        return mean, variance

    def _relative_to(
        self, jac: Jacobians, dense: list[torch.Tensor], ref_mean: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``r(x) - mean r(ref)`` from the items' Jacobians, the
        reference's mean Jacobian and its mean reward."""
        cross, quad = self.structure.dense_cross(jac, dense)
        variance = self.structure.cross(jac, jac) - 2 * cross + quad
        return jac.output - ref_mean, variance.clamp_min(0.0)

    def _relative_dense(self, xs: list[Any], refs: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`relative_moments` with laplace-torch's Jacobians throughout (models outside
        the fast path; their ``(N, P)`` Jacobians are the memory bound there)."""
        structure = self.structure
        structure.recorder.supported = False
        ref_jacs = [self.jacobians(r)[0] for r in refs]
        dense = structure.mean_jacobian(ref_jacs)
        ref_mean = torch.cat([j.output for j in ref_jacs]).mean()
        parts = [self._relative_to(self.jacobians(x)[0], dense, ref_mean) for x in xs]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def samples(
        self, x: torch.Tensor, n_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Joint samples ``(S, N)`` of the linearized rewards ``r(x) + J(x) (theta - theta*)``."""
        (jac,) = self.jacobians(x)
        return self.structure.samples(jac, n_samples, generator)


def _group_batches(
    index: torch.Tensor, counts: torch.Tensor, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Whole groups of at most ``batch_size`` items packed into batches, in group order:
    per batch its items ``(k,)`` (by group), their group ids renumbered from 0 ``(k,)`` and
    its number of groups. Groups larger than ``batch_size`` are left out."""
    small = (counts > 0) & (counts <= batch_size)
    groups = small.nonzero().flatten()
    if groups.numel() == 0:
        return []
    ends = torch.cumsum(counts[groups], 0)  # items up to and including each group
    order = torch.argsort(index, stable=True)
    order = order[small[index[order]]]  # the items of the small groups, by group
    batches, first, taken = [], 0, 0
    while first < groups.numel():
        last = int(torch.searchsorted(ends, taken + batch_size, right=True))  # past the batch
        rows = order[taken : int(ends[last - 1])]
        local = torch.unique(index[rows], return_inverse=True)[1]
        batches.append((rows, local, last - first))
        first, taken = last, int(ends[last - 1])
    return batches


def _split_items(result: LayerIO) -> tuple[LayerIO, LayerIO]:
    """Layer I/O of ``2B`` interleaved items -> that of items 0 and of items 1 of each pair."""
    out0, out1 = pair_split(result.output)
    acts, grads = [pair_split(a) for a in result.acts], [pair_split(g) for g in result.grads]
    return (
        LayerIO(out0, [a[0] for a in acts], [g[0] for g in grads]),
        LayerIO(out1, [a[1] for a in acts], [g[1] for g in grads]),
    )


def _rows(result: LayerIO, rows: torch.Tensor) -> LayerIO:
    return LayerIO(
        result.output[rows], [a[rows] for a in result.acts], [g[rows] for g in result.grads]
    )


def _double(result: LayerIO) -> LayerIO:
    return LayerIO(
        result.output.double(),
        [a.double() for a in result.acts],
        [g.double() for g in result.grads],
    )
