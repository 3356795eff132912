"""The Kronecker posterior: per weight the nearest Kronecker product of its exact pair GGN block.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``in``/``out`` the sizes of a linear
layer, ``L`` positions of a sequence.

Curvature: for a linear weight the exact Bradley-Terry GGN block is
``H = sum_n w_n vec(g1_n a1_n^T - g0_n a0_n^T) vec(.)^T`` (``w = p (1 - p)``). Its *nearest
Kronecker product* ``G x A`` (Van Loan & Pitsianis, 1993) is found by alternating least squares
on the stored per-pair factors (:func:`nearest_kronecker_factors`): from ``A = I``, the output
factor optimal for it, then the input factor optimal for that (two half-steps by default,
within 0.25% of the nearest-Kronecker floor on the accuracy MLPs). It is exact whenever the
block is a Kronecker product, in particular for the last layer of a single-output network.
A ``Conv1D`` weight (GPT-2), stored ``(in, out)``, has the same block with its rows and columns
permuted to the order of its flattened parameters: there it is ``A x G``, the factors swapped.
Bias blocks are kept exact and dense, so a head bias, which cancels in ``r(x_1) - r(x_0)``,
gets curvature exactly zero. laplace-torch's KFAC instead treats the ``2B`` items as
independent samples.

Whole-data Kronecker factors cannot be summed batch by batch beyond the first half-step, so
the fit sums what one pass gives (exact blocks, bias blocks, the first half-step) as the batches
arrive and keeps the per-pair factors of the layers that need more (``2 (in + out)`` numbers per
pair and layer, :class:`~bt_laplace.structures.kron_factors.PairKronFactors`, up to a limit,
then recomputed); it is finished once by
:class:`PairKronLaplace` / :class:`PairKronLLLaplace`, which are laplace-torch's
``KronLaplace`` / ``KronLLLaplace`` with only ``fit`` extended. A last-layer fit of a reward
model keeps nothing per pair: its head is exact in one pass.

Covariance: in the eigenbases ``Q_G``, ``Q_A`` of the two factors with eigenvalues ``l_G``,
``l_A`` and prior ``delta``, ``Sigma_W`` is diagonal, ``M = 1 / (l_G l_A^T + delta)``
(:mod:`bt_laplace.structures._eigenbasis`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from laplace.baselaplace import KronLaplace
from laplace.lllaplace import KronLLLaplace
from laplace.utils import Kron, KronDecomposed
from torch.utils.data import DataLoader

from bt_laplace._layer_io import LayerIO
from bt_laplace._loader import batch_on
from bt_laplace.structures._eigenbasis import EigenbasisStructure, SlotCovariance
from bt_laplace.structures.inplace import (
    BTKronLaplace,
    BTKronLLLaplace,
    FullPrecisionLaplace,
    InPlaceLLLaplace,
)
from bt_laplace.structures.kron_factors import (
    PairKronFactors,
    Reduce,
    nearest_kronecker_factors,
)
from bt_laplace.structures.low_rank import (
    KRON_FULL_WIDTH,
    KRON_RANK,
    LowRankFactor,
    LowRankKron,
    LowRankKronDecomposed,
    check_low_rank,
    extended_values,
)

__all__ = [
    "KronStructure",
    "PairKronFactors",
    "PairKronLaplace",
    "PairKronLLLaplace",
    "nearest_kronecker_factors",
]


class KronStructure(EigenbasisStructure):
    """``hessian_structure="kron"``: bt_laplace's :class:`PairKronLaplace` /
    :class:`PairKronLLLaplace` (laplace-torch's ``KronLaplace`` / ``KronLLLaplace`` with another
    backend)."""

    name: ClassVar[str] = "kron"
    laplace_type: ClassVar[type] = KronLaplace

    @classmethod
    def laplace_class(cls, subset_of_weights: str, pair_backend: bool) -> type:
        if not pair_backend:
            return BTKronLaplace if subset_of_weights == "all" else BTKronLLLaplace
        return PairKronLaplace if subset_of_weights == "all" else PairKronLLLaplace

    @staticmethod
    def curvature_eigenvalues(laplace: Any) -> list[torch.Tensor] | None:
        h: Any = laplace.H
        if getattr(h, "damping", False):
            return None
        groups = []
        for ls in h.eigenvalues:
            vals = ls[0] if len(ls) == 1 else torch.outer(ls[0], ls[1]).flatten()
            groups.append(vals * laplace._H_factor)
        return groups

    @staticmethod
    def sum_across_processes(laplace: Any, sum_: Reduce) -> None:
        """Nothing left to sum: the factors were summed over processes while they were
        found (each alternating step sums over all pairs)."""

    @staticmethod
    def curvature_state(laplace: Any) -> dict[str, torch.Tensor]:
        """The dense factors ``H_facs.i.j``; a low-rank factor is its eigendecomposition,
        saved by :meth:`saved_state`."""
        kfacs = laplace.H_facs.kfacs
        return {
            f"H_facs.{i}.{j}": f
            for i, fs in enumerate(kfacs)
            for j, f in enumerate(fs)
            if isinstance(f, torch.Tensor)
        }

    saved_settings: ClassVar[tuple[str, ...]] = ("damping",)

    @classmethod
    def state_numbers(cls, shapes: list[tuple[int, ...]], backend_kwargs: dict[str, Any]) -> int:
        """Per weight its two factors (one exact block when a side is 1), per bias its dense
        block: a factor kept whole holds itself and its eigenvectors (``2 d^2``), a low-rank
        one ``k`` eigenvectors (``d k``); each its ``d`` eigenvalues."""
        rank, full_width = check_low_rank(
            backend_kwargs.get("kron_rank", KRON_RANK),
            backend_kwargs.get("kron_full_width", KRON_FULL_WIDTH),
        )

        def factor(d: int, whole: bool = False) -> int:
            low = not whole and rank is not None and d > max(full_width, rank)
            return d * (rank if low and rank is not None else 2 * d) + d

        total = 0
        for s in shapes:
            if len(s) == 1:
                total += factor(s[0], whole=True)
            elif min(s) == 1 or len(s) != 2:
                total += factor(math.prod(s)) + 3  # and the 1 x 1 factor
            else:
                total += factor(s[0]) + factor(s[1])
        return total

    @classmethod
    def saved_state(cls, laplace: Any) -> dict[str, torch.Tensor]:
        """The factors and their eigendecomposition (``eig.i.vectors.j``,
        ``eig.i.values.j``), so that a loaded posterior predicts bit-identically without
        decomposing them again."""
        state = super().saved_state(laplace)
        h = laplace.H
        for i, (vecs, vals) in enumerate(zip(h.eigenvectors, h.eigenvalues, strict=True)):
            for j, (q, v) in enumerate(zip(vecs, vals, strict=True)):
                state[f"eig.{i}.vectors.{j}"], state[f"eig.{i}.values.{j}"] = q, v
        return state

    @classmethod
    def restore_state(cls, laplace: Any, state: dict[str, torch.Tensor]) -> None:
        vectors = _indexed(state, "eig", "vectors")
        values = _indexed(state, "eig", "values")
        kfacs: Any = [
            [
                state.get(f"curvature.H_facs.{i}.{j}", LowRankFactor(q, v))
                for j, (q, v) in enumerate(zip(qs, vs, strict=True))
            ]
            for i, (qs, vs) in enumerate(zip(vectors, values, strict=True))
        ]
        if any(isinstance(f, LowRankFactor) for fs in kfacs for f in fs):
            laplace.H_facs = LowRankKron(kfacs)
            laplace.H = LowRankKronDecomposed(vectors, values, damping=laplace.damping)
            return
        laplace.H_facs = Kron(kfacs)
        laplace.H = KronDecomposed(vectors, values, damping=laplace.damping)

    @staticmethod
    def exact_ggn_eigenvalues(laplace: Any) -> torch.Tensor | None:
        """A last-layer posterior over a head with one output whose bias, if any, has no
        curvature: the weight block is then exactly ``G x A`` with a 1 x 1 ``G``, and the
        weight-bias block, which the Kronecker form drops, is zero (it is bounded by the bias
        block: ``|H_wb|^2 <= H_ww H_bb``). A reward head's bias always cancels in
        ``r(x_1) - r(x_0)``, so this is the default last-layer posterior."""
        if (
            not isinstance(laplace, PairKronLLLaplace)
            or laplace.damping
            or isinstance(laplace.H_facs, LowRankKron)  # truncated: not the exact GGN
        ):
            return None
        kfacs = laplace.H_facs.kfacs
        weights = [fs for fs in kfacs if len(fs) == 2]
        biases = [fs[0] for fs in kfacs if len(fs) == 1]
        if len(weights) != 1 or weights[0][0].shape != (1, 1) or any(b.any() for b in biases):
            return None
        g, a = (f.detach().to("cpu", torch.float64) for f in weights[0])
        eigs = torch.cat(
            [g.reshape(1) * torch.linalg.eigvalsh(a), *(torch.zeros(len(b)) for b in biases)]
        )
        return (eigs * float(laplace._H_factor)).clamp_min(0.0)

    def _pieces(self) -> list[SlotCovariance]:
        prec: Any = self.laplace.posterior_precision
        pieces = []
        for qs, ls, delta in zip(prec.eigenvectors, prec.eigenvalues, prec.deltas, strict=True):
            # a low-rank factor's thin basis: its eigenvalues laid out as rotate()'s coordinates
            ls = [extended_values(v, q) for v, q in zip(ls, qs, strict=True)]
            if len(ls) == 1:
                pieces.append(SlotCovariance(qs[0], None, 1.0 / (ls[0] + delta)))
            elif prec.damping:
                s = torch.sqrt(delta)
                pieces.append(SlotCovariance(qs[0], qs[1], 1.0 / torch.outer(ls[0] + s, ls[1] + s)))
            else:
                pieces.append(
                    SlotCovariance(qs[0], qs[1], 1.0 / (torch.outer(ls[0], ls[1]) + delta))
                )
        return pieces


class _PairKronFit:
    """Extends laplace-torch's Kron ``fit``: one pass stores pair factors, then ``finish_kron``."""

    #: sums a tensor across the processes the pairs are split over (an all-reduce), set by
    #: :func:`~bt_laplace.fit_reward_posterior` under ``torch.distributed``: each alternating
    #: step of the factors then sums over all pairs; None for one process
    reduce_across_processes: Callable[[torch.Tensor], torch.Tensor] | None = None

    backend: Any
    _device: Any
    H: Any
    H_facs: Any
    damping: bool

    def _init_H(self) -> None:  # noqa: N802 (laplace-torch's name)
        self.H = _UnfittedKron([])

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
        backend = self.backend

        def batches() -> Iterator[tuple[LayerIO, torch.Tensor]]:  # one more pass, recomputed
            for data in train_loader:
                x, y = batch_on(data, backend.dict_key_y, self._device)
                _, w, result, _ = backend.pair_pass(x, y, kron=True)
                yield backend.objective_pairs(result, w)

        self.H_facs = backend.finish_kron(reduce=self.reduce_across_processes, batches=batches)
        self.H = self.H_facs.decompose(damping=self.damping)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """laplace-torch's, with the factors rebuilt here: its own puts them into the
        unfitted placeholder ``_init_H`` returns, which never decomposes."""
        super().load_state_dict(state_dict)  # type: ignore[misc]
        kfacs = state_dict["H"]
        low_rank = any(isinstance(f, LowRankFactor) for fs in kfacs for f in fs)
        self.H_facs = LowRankKron(kfacs) if low_rank else Kron(kfacs)
        self.H = self.H_facs.decompose(damping=self.damping)


class _UnfittedKron(Kron):
    """Stands in for laplace-torch's all-zero ``Kron`` until ``finish_kron``: that one holds
    every ``(d, d)`` factor (822 MB for one 14336 wide) and its ``fit`` eigendecomposes them
    (minutes), only to be replaced by the pair factors."""

    def __add__(self, other: Kron) -> Kron:
        return self

    def decompose(self, damping: bool = False) -> Any:
        return self


class PairKronLaplace(_PairKronFit, FullPrecisionLaplace, KronLaplace):
    """laplace-torch's ``KronLaplace`` fitted with pair-correct Kronecker factors.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from bt_laplace import PairwiseRewardModel
        >>> from bt_laplace.curvature import BradleyTerryGGN
        >>> model = PairwiseRewardModel(nn.Sequential(nn.Linear(3, 5), nn.Tanh(),
        ...                                           nn.Linear(5, 1)))
        >>> loader = DataLoader(TensorDataset(torch.randn(8, 2, 3), torch.ones(8).long()),
        ...                     batch_size=4)
        >>> la = PairKronLaplace(model, "reward_modeling", backend=BradleyTerryGGN)
        >>> la.fit(loader)
        >>> la.optimize_prior_precision(method="marglik")  # laplace-torch's own machinery
        >>> [tuple(f.shape) for f in la.H_facs.kfacs[2]]  # head weight: 1x1 times 5x5
        [(1, 1), (5, 5)]
    """

    _key = ("bt_laplace", "all_kron")  # keeps laplace.Laplace()'s factory map unambiguous


class PairKronLLLaplace(_PairKronFit, KronLLLaplace, InPlaceLLLaplace):
    """laplace-torch's ``KronLLLaplace`` fitted with pair-correct Kronecker factors, over the
    model in place (no copy; see :mod:`bt_laplace.structures.inplace`)."""

    _key = ("bt_laplace", "last_layer_kron")


def _indexed(state: dict[str, torch.Tensor], prefix: str, middle: str | None = None) -> Any:
    """``prefix.i[.middle].j`` tensors of a saved state as a list of lists, in index order."""
    head = prefix.split(".")
    groups: dict[int, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[: len(head)] != head:
            continue
        rest = parts[len(head) :]
        if middle is not None:
            if len(rest) != 3 or rest[1] != middle:
                continue
            rest = [rest[0], rest[2]]
        groups.setdefault(int(rest[0]), {})[int(rest[1])] = value
    return [[g[j] for j in sorted(g)] for _, g in sorted(groups.items())]
