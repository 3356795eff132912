"""The exact evidence's pair kernel from layer I/O, in the smaller of its two forms.

Shape legend: ``N`` training pairs, ``M`` their distinct items, ``r`` the rank of the pairs'
graph Laplacian (at most ``M - 1``), ``Q`` query pairs, ``in``/``out`` the sizes of a linear
layer.

The exact evidence and the exact pair variances (:mod:`bt_laplace.prior.evidence`) need the
spectrum of the pair kernel ``K = W^1/2 dJ dJ^T W^1/2`` ``(N, N)``, ``dJ`` the Jacobian of the
reward differences. Its entries come from the items' layer inputs ``a`` and output gradients
``g``: the Jacobian of one item's reward has the inner products
``J_i . J_j = sum_layers (g_i . g_j)(a_i . a_j) [+ g_i . g_j for a bias]`` (the *item
kernel* ``G``), and a pair's is the difference of its two items'.

Preference data compare the same items many times (a movie, a word, a response rated against
several others): with ``D`` ``(N, M)`` the signed incidence of the pairs on their distinct items,
``dJ = D J`` and ``K = B G B^T`` with ``B = W^1/2 D``. Its non-zero spectrum is that of the
``r x r`` matrix ``S = F^T G F``, where ``L = B^T B = D^T W D = F F^T`` is the weighted graph
Laplacian of the pairs (``F`` its scaled eigenvectors of non-zero eigenvalue): ``B = V F^T``
with ``V`` ``(N, r)`` orthonormal, so ``K = V S V^T``. The same ``V`` gives the posterior
variance of a query pair in the reduced form,
``(B j)^T (T K + delta)^-1 (B j) = (F^T J j)^T (T S + delta)^-1 (F^T J j)``.

Both forms start from the item kernel ``G`` ``(M, M)`` of the distinct items (symmetric: the
blocks on and above its diagonal are computed). Where ``M`` is well below ``N`` (MovieLens at
4,000 pairs: 1,023 movies) ``S`` is decomposed at size ``r < M`` instead of ``N``; otherwise
the pair kernel ``B G B^T`` is gathered from ``G``'s rows and columns, ``M^2 / 2`` products of
item I/O instead of the ``3 N^2`` of the pair kernel's own blocks (``M <= 2N``; about 4,500
items in 4,000 pairs on Warriner). The result is the same to rounding, not an approximation.

With TRL's ``center_rewards_coefficient`` ``c`` the objective's GGN has ``N`` more rows,
``sqrt(2 c) (J_0 + J_1)`` (:attr:`PairItems.centering`): ``B`` gains the unsigned incidence
rows and ``L = B^T B`` their signless Laplacian, ``2 c`` a pair on and off the diagonal.
``L`` is then positive definite (each pair's ``w (x_1 - x_0)^2 + 2 c (x_1 + x_0)^2`` is),
``F`` its Cholesky factor and ``S`` ``M x M``, and the pair form has ``2 N`` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bt_laplace._layer_io import posterior_parameters

__all__ = [
    "ggn_cost",
    "item_form_cost",
    "weight_width",
    "centering_of",
    "rows_per_pair",
    "LayerRows",
    "PairItems",
    "KernelForm",
    "pair_items",
    "kernel_form",
    "pair_gram_diagonal",
]

#: entries of the ``rows x cols`` blocks a kernel is built in
_KERNEL_BLOCK = 2**22
#: row blocks of a symmetric item kernel (its diagonal blocks are computed whole)
_SYMMETRIC_BLOCKS = 8
#: per tapped layer, the kinds (``"weight"``, ``"bias"``) of its posterior parameters
Kinds = dict[int, set[str]]


@dataclass(frozen=True)
class LayerRows:
    """Per tapped layer, the input activations ``(n, in)`` and output gradients ``(n, out)`` of
    ``n`` items (float64), items of pairs in pair order (item 0, item 1 of each pair)."""

    acts: list[torch.Tensor]
    grads: list[torch.Tensor]

    def take(self, index: torch.Tensor | slice) -> LayerRows:
        return LayerRows([a[index] for a in self.acts], [g[index] for g in self.grads])


def item_gram(kinds: Kinds, left: LayerRows, right: LayerRows) -> torch.Tensor:
    """``J_left J_right^T`` ``(n_left, n_right)``: the inner products of the items' reward
    Jacobians over the posterior parameters, from their layer I/O, in row blocks."""
    rows, cols = left.acts[0].shape[0], right.acts[0].shape[0]
    gram = torch.empty(rows, cols, dtype=torch.float64, device=left.acts[0].device)
    step = max(1, _KERNEL_BLOCK // max(cols, 1))
    for start in range(0, rows, step):
        r = slice(start, start + step)
        _gram_rows(kinds, left.take(r), right, gram[r])
    return gram


def _gram_rows(kinds: Kinds, left: LayerRows, right: LayerRows, out: torch.Tensor) -> None:
    """``out = J_left J_right^T``: per layer ``(g . h)(a . b)`` for a weight, ``+ g . h`` for
    a bias (one product of the two Gram matrices: ``(g . h)(a . b + 1)``)."""
    out.zero_()
    for layer, kind in kinds.items():
        grads = left.grads[layer] @ right.grads[layer].T
        if "weight" not in kind:
            out += grads
            continue
        acts = left.acts[layer] @ right.acts[layer].T
        if "bias" in kind:
            acts += 1.0
        out.addcmul_(grads, acts)


def item_kernel(kinds: Kinds, items: LayerRows) -> torch.Tensor:
    """``J J^T`` ``(M, M)`` of items with themselves: the blocks on and above the diagonal,
    mirrored (about half the products of :func:`item_gram`), exactly symmetric."""
    n = items.acts[0].shape[0]
    gram = torch.empty(n, n, dtype=torch.float64, device=items.acts[0].device)
    step = max(1, min(-(-n // _SYMMETRIC_BLOCKS), _KERNEL_BLOCK // max(n, 1)))
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = gram[start:stop, start:]
        _gram_rows(kinds, items.take(slice(start, stop)), items.take(slice(start, None)), block)
        diagonal = block[:, : stop - start]
        diagonal.copy_((diagonal + diagonal.T) / 2)
        gram[stop:, start:stop] = block[:, stop - start :].T
    return gram


def pair_gram_diagonal(kinds: Kinds, items0: LayerRows, items1: LayerRows) -> torch.Tensor:
    """``|dJ_n|^2`` ``(n,)`` of the pairs ``(items0[n], items1[n])``, without a kernel."""
    out = torch.zeros(items0.acts[0].shape[0], dtype=torch.float64, device=items0.acts[0].device)
    for layer, kind in kinds.items():
        a0, a1, g0, g1 = (
            items0.acts[layer],
            items1.acts[layer],
            items0.grads[layer],
            items1.grads[layer],
        )
        if "weight" in kind:
            out += (
                g1.square().sum(1) * a1.square().sum(1)
                + g0.square().sum(1) * a0.square().sum(1)
                - 2 * (g1 * g0).sum(1) * (a1 * a0).sum(1)
            )
        if "bias" in kind:
            out += (g1 - g0).square().sum(1)
    return out


@dataclass(frozen=True)
class KernelForm:
    """The pair kernel in the form it is decomposed in: ``matrix`` ``(n, n)``, the pair kernel
    itself (``n = N``) or ``S = F^T G F`` (``n = r``), with the same non-zero spectrum.

    Attributes:
        matrix: The symmetric positive semi-definite matrix, float64, untempered.
        cross: Given items 0 and items 1 of ``Q`` query pairs, the ``(n, Q)`` matrix ``c`` with
            ``c^T (T matrix + delta)^-1 c = (B j)^T (T K + delta)^-1 (B j)`` for each query's
            reward-difference Jacobian ``j``.
    """

    matrix: torch.Tensor
    cross: Callable[[LayerRows, LayerRows], torch.Tensor]
    pairs: PairItems
    restrict: Callable[[torch.Tensor], KernelForm] | None = None

    @property
    def n_pairs(self) -> int:
        """``N``, the size of the pair kernel (its other ``N - n`` eigenvalues are 0): the
        rows of ``B`` (:attr:`PairItems.n_rows`)."""
        return self.pairs.n_rows

    def without_items(self, held: torch.Tensor) -> KernelForm:
        """The same form of the pairs with neither item in ``held`` ``(M,)`` (a mask over
        :attr:`PairItems.distinct`), from this one's matrices: the pair kernel's rows and
        columns of those pairs, or ``F^T G F`` from the rows and columns of ``G`` of their
        items and the factor of their own Laplacian; equal to the form built afresh from
        those pairs (to rounding), without another pass or item kernel. Needs
        :attr:`restrict` (a form through the items keeps ``G`` only when built
        ``restrictable``)."""
        if self.restrict is None:
            raise ValueError("this kernel form was built without `restrictable=True`")
        return self.restrict(~held[self.pairs.index].any(1))

    def padded(self, eigenvalues: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Eigenvalues of ``matrix`` (ascending) with the pair kernel's other ones, zeros,
        in front: ``size`` in all (``N`` by default; ``P`` for the GGN's when ``P <= N``)."""
        size = self.n_pairs if size is None else size
        zeros = eigenvalues.new_zeros(max(size - len(eigenvalues), 0))
        return torch.cat([zeros, eigenvalues])


@dataclass(frozen=True)
class PairItems:
    """``N`` pairs' items and weights, through their ``M`` distinct items.

    Attributes:
        root: ``sqrt(w)`` ``(N,)`` of each pair's weight ``p (1 - p)``.
        distinct: The ``M`` distinct items' layer I/O.
        index: ``(N, 2)`` the distinct item of each pair's two items.
        centering: The weight ``2 c`` of the centering rows ``J_0 + J_1`` of TRL's
            ``center_rewards_coefficient`` ``c``, one a pair after the ``N`` pair rows; 0
            for none.
        keys: The distinct items' inputs ``(M, d)``, in ``torch.unique``'s order, where the
            items were found by their inputs; None where by their layer I/O.
    """

    root: torch.Tensor
    distinct: LayerRows
    index: torch.Tensor
    centering: float = 0.0
    keys: torch.Tensor | None = None

    def take(self, keep: torch.Tensor) -> tuple[PairItems, torch.Tensor]:
        """The pairs ``keep`` ``(N,)`` (a mask) with only their own distinct items, and which
        of these items those are ``(M',)``."""
        used, index = torch.unique(self.index[keep], return_inverse=True)
        keys = None if self.keys is None else self.keys[used]
        taken = PairItems(self.root[keep], self.distinct.take(used), index, self.centering, keys)
        return taken, used

    @property
    def n_items(self) -> int:
        return self.distinct.acts[0].shape[0]

    @property
    def n_rows(self) -> int:
        """Rows of ``B``: ``N``, or ``2 N`` with the centering rows."""
        return self.root.shape[0] * (2 if self.centering else 1)

    @property
    def through_items(self) -> bool:
        """Whether :func:`kernel_form` decomposes ``S = F^T G F`` (``M x M`` factors) rather
        than the pair kernel (``N x N``): where that costs fewer operations."""
        return _reduced_cost(self.n_items) < _pair_cost(self.n_rows)

    @property
    def size(self) -> int:
        """The side of the largest matrix :func:`kernel_form` builds: ``M`` through the items,
        else ``max(M, N)`` (the item kernel, then the pair kernel)."""
        return self.n_items if self.through_items else max(self.n_items, self.n_rows)


def pair_items(
    items: LayerRows,
    root: torch.Tensor,
    inputs: torch.Tensor | None = None,
    *,
    centering: float = 0.0,
) -> PairItems:
    """Find the distinct items of ``N`` pairs.

    Args:
        items: The ``2N`` items' layer I/O in pair order, gradients unweighted.
        root: ``sqrt(w)`` ``(N,)`` of each pair's weight ``p (1 - p)``.
        inputs: The ``2N`` items' inputs ``(2N, d)``: items are the same where these are
            (their layer I/O then agree to rounding, which depends on the batch an item came
            in; the first one's is taken); None to compare the layer I/O bit for bit.
    """
    keys = torch.cat([*items.acts, *items.grads], 1) if inputs is None else inputs
    distinct, index = torch.unique(keys, dim=0, return_inverse=True)
    n_items = distinct.shape[0]
    order = torch.arange(len(index), device=index.device)
    first = torch.full((n_items,), len(index), device=index.device)
    first = first.scatter_reduce_(0, index, order, "amin")
    index = index.reshape(root.shape[0], 2)
    found = None if inputs is None else distinct
    return PairItems(root, items.take(first), index, centering, found)


def weight_width(laplace: Any) -> int:
    """The summed ``in + out`` of the weight matrices a posterior is over: about the width of
    one item's layer I/O (the ``w`` of the cost estimates) before a pass has run."""
    return sum(sum(t.shape) for t in posterior_parameters(laplace) if t.ndim == 2)


def centering_of(laplace: Any) -> float | None:
    """The ``center_rewards_coefficient`` a posterior was fit with (its ``backend_kwargs``;
    None: none)."""
    kwargs = getattr(laplace, "_backend_kwargs", None) or {}
    return kwargs.get("center_rewards_coefficient")


def rows_per_pair(laplace: Any) -> int:
    """Rows of the exact evidence's kernel a training pair gives: 2 with TRL's centering
    term (its row ``J_0 + J_1`` besides ``J_1 - J_0``), else 1."""
    return 2 if centering_of(laplace) else 1


def ggn_cost(n_pairs: int, n_params: int) -> float:
    """Multiply-adds of the ``P x P`` GGN summed over ``N`` pairs, and its eigenvalues."""
    return n_pairs * n_params**2 + n_params**3


def item_form_cost(n_items: int, width: int) -> float:
    """Multiply-adds of the kernel through ``M`` distinct items: the item kernel (a Gram
    product per layer, half of it by symmetry), ``F^T G F`` (two ``M x M x r`` products,
    ``r < M``), the Laplacian's Cholesky factor and the ``r x r`` eigenvalues."""
    return n_items**2 * width / 2 + _reduced_cost(n_items)


def pair_form_cost(n_pairs: int, n_items: int, width: int) -> float:
    """Multiply-adds of the pair kernel of ``N`` pairs of ``M`` distinct items: the item
    kernel, then the ``N x N`` eigenvalues."""
    return n_items**2 * width / 2 + _pair_cost(n_pairs)


def _reduced_cost(n_items: int) -> float:
    return (2 + 1 / 3 + 4 / 3) * n_items**3


def _pair_cost(n_pairs: int) -> float:
    return 4 / 3 * n_pairs**3


def kernel_form(
    kinds: Kinds,
    pairs: PairItems,
    *,
    through_items: bool | None = None,
    restrictable: bool = False,
) -> KernelForm:
    """The pair kernel of ``pairs`` from the item kernel of their distinct items: reduced to
    ``S = F^T G F`` where that costs fewer operations than the pair kernel itself (module doc).

    Args:
        kinds: Per tapped layer, the kinds of its posterior parameters.
        pairs: The pairs (:func:`pair_items`).
        through_items: Force the reduced form (True) or the pair kernel (False); None: the
            cheaper (:attr:`PairItems.through_items`).
        restrictable: Make :meth:`KernelForm.without_items` work (through the items, ``G``
            ``(M, M)`` is then kept as long as the form).
    """
    reduced = pairs.through_items if through_items is None else through_items
    if reduced:
        return _item_form(kinds, pairs, restrictable=restrictable)
    return _pair_form(kinds, pairs)


def _pair_form(kinds: Kinds, pairs: PairItems) -> KernelForm:
    """The pair kernel ``B G B^T`` ``(N, N)``: ``B`` (``N x M``, ``sqrt(w)`` and ``-sqrt(w)``
    at a pair's second and first item; with centering ``2N x M``, then ``sqrt(2 c)`` at both)
    applied by gathering rows of ``G`` and of ``B G`` (symmetric to rounding: eigenvalues and
    Cholesky factors read one triangle)."""
    first, second = pairs.index[:, 0], pairs.index[:, 1]
    root, centering = pairs.root, pairs.centering

    def apply(mat: torch.Tensor) -> torch.Tensor:  # B mat, mat (M, k) row-major
        out, other = mat.index_select(0, second), mat.index_select(0, first)
        if not centering:
            return out.sub_(other).mul_(root[:, None])
        plus = (out + other).mul_(centering**0.5)
        return torch.cat([out.sub_(other).mul_(root[:, None]), plus])

    half = apply(item_kernel(kinds, pairs.distinct))  # B G (N, M); G = G^T: K = B (B G)^T
    kernel = apply(half.T.contiguous())  # rows gather faster than columns
    del half

    def cross(q0: LayerRows, q1: LayerRows) -> torch.Tensor:
        distinct = pairs.distinct
        return apply(item_gram(kinds, distinct, q1).sub_(item_gram(kinds, distinct, q0)))

    return _rows_of(kernel, pairs, cross)


def _rows_of(
    kernel: torch.Tensor,
    pairs: PairItems,
    cross: Callable[[LayerRows, LayerRows], torch.Tensor],
) -> KernelForm:
    """The pair form of ``kernel`` ``(n_rows, n_rows)``: restricted to some pairs, the rows
    and columns of those pairs (and of their centering rows)."""

    def restrict(keep: torch.Tensor) -> KernelForm:
        rows = torch.cat([keep, keep]) if pairs.centering else keep
        picked = rows.nonzero().reshape(-1)
        matrix = kernel.index_select(0, picked).index_select(1, picked)
        taken, _ = pairs.take(keep)
        return _rows_of(matrix, taken, lambda q0, q1: cross(q0, q1).index_select(0, picked))

    return KernelForm(kernel, cross, pairs, restrict)


def _item_form(
    kinds: Kinds,
    pairs: PairItems,
    gram: torch.Tensor | None = None,
    *,
    restrictable: bool = False,
) -> KernelForm:
    """``S = F^T G F`` from the item kernel ``G`` of the distinct items (module doc; ``gram``:
    ``G`` if at hand; ``restrictable``: keep it for :meth:`KernelForm.without_items`)."""
    factor = laplacian_factor(
        pairs.index, pairs.root.square(), pairs.n_items, centering=pairs.centering
    )  # (M, r)
    if gram is None:
        gram = item_kernel(kinds, pairs.distinct)
    matrix = factor.T @ gram @ factor
    matrix = (matrix + matrix.T) / 2
    distinct = pairs.distinct

    def cross(q0: LayerRows, q1: LayerRows) -> torch.Tensor:
        return factor.T @ (item_gram(kinds, distinct, q1) - item_gram(kinds, distinct, q0))

    if not restrictable:
        return KernelForm(matrix, cross, pairs)
    kept = gram

    def restrict(keep: torch.Tensor) -> KernelForm:
        taken, used = pairs.take(keep)
        return _item_form(kinds, taken, kept.index_select(0, used).index_select(1, used))

    return KernelForm(matrix, cross, pairs, restrict)


def laplacian(
    index: torch.Tensor, weight: torch.Tensor, n_items: int, *, centering: float = 0.0
) -> torch.Tensor:
    """The weighted graph Laplacian ``D^T W D`` ``(M, M)`` of pairs ``index`` ``(N, 2)``, plus
    ``centering`` times the pairs' signless Laplacian (``sum (e_0 + e_1)(e_0 + e_1)^T``)."""
    lap = torch.zeros(n_items, n_items, dtype=torch.float64, device=weight.device)
    first, second = index[:, 0], index[:, 1]
    both = weight + centering
    off = centering - weight
    for i, j, w in ((first, first, both), (second, second, both), (first, second, off)):
        lap.index_put_((i, j), w, accumulate=True)
        if i is not j:
            lap.index_put_((j, i), w, accumulate=True)
    return lap


def laplacian_factor(
    index: torch.Tensor, weight: torch.Tensor, n_items: int, *, centering: float = 0.0
) -> torch.Tensor:
    """``F`` ``(M, r)`` with ``F F^T = D^T W D``, the Laplacian of pairs ``index`` ``(N, 2)``
    with weights ``weight`` ``(N,)`` (with ``centering``, plus that times the signless
    Laplacian, positive definite: its Cholesky factor, ``r = M``).

    Grounded Cholesky: in each connected set of items one item is held at zero (``x^T L x``
    is a sum of ``w (x_i - x_j)^2``, so ``L = P^T L_r P`` with ``P x = x - x_root`` on the other
    items and ``L_r`` the Laplacian without the roots' rows and columns, positive definite),
    and ``F = P^T chol(L_r)``: ``O(M^3 / 3)``. Where the weights are so uneven that
    ``L_r`` is not numerically positive definite, the eigendecomposition of ``L`` instead
    (its eigenvectors of eigenvalue above rounding, scaled by their roots).
    """
    lap = laplacian(index, weight, n_items, centering=centering)
    if centering:  # positive definite: its Cholesky factor
        chol, info = torch.linalg.cholesky_ex(lap)
        factor = chol if int(info) == 0 else None
    else:
        factor = _grounded_factor(lap, index, weight)
    if factor is not None:
        return factor
    values, vectors = torch.linalg.eigh(lap)
    floor = max(float(values[-1]), 0.0) * n_items * torch.finfo(lap.dtype).eps
    keep = values > floor
    return vectors[:, keep] * values[keep].sqrt()


def _grounded_factor(
    lap: torch.Tensor, index: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor | None:
    """The grounded Cholesky factor of :func:`laplacian_factor` (one root held at zero in
    each connected set of items), or None where ``L_r`` is not numerically positive
    definite."""
    n_items = lap.shape[0]
    label = _components(index[weight > 0], n_items)
    root = label == torch.arange(n_items, device=label.device)
    rest = (~root).nonzero().flatten()
    chol, info = torch.linalg.cholesky_ex(lap[rest][:, rest])
    if int(info) != 0:
        return None
    factor = torch.zeros(n_items, len(rest), dtype=lap.dtype, device=lap.device)
    factor[rest] = chol
    return factor.index_add_(0, label[rest], chol, alpha=-1)


def _components(edges: torch.Tensor, n_items: int) -> torch.Tensor:
    """The smallest item of each item's connected set under ``edges`` ``(E, 2)`` ``(M,)``:
    labels lowered along the edges, then by pointer jumping, until nothing changes."""
    label = torch.arange(n_items, device=edges.device)
    i, j = edges[:, 0], edges[:, 1]
    while True:
        low = torch.minimum(label[i], label[j])
        new = label.scatter_reduce(0, i, low, "amin").scatter_reduce_(0, j, low, "amin")
        new = new[new]  # pointer jumping: an item takes its label's label
        if torch.equal(new, label):
            return label
        label = new
