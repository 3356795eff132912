"""Kron variances through a low-rank M: exact enough, but not cheaper on the CPU (issue 22, item 2).

One-off study, not a benchmark page. Run from the repository root::

    python benchmarks/experiments/separable_kron.py

Under ``kron`` a weight's variance per item is ``uu^T M vv`` with ``M = 1 / (l mu^T + delta)``
and ``uu``, ``vv`` the squared rotated sides: one ``N x R x C`` product, as much as a rotation.
``M`` is numerically of low rank (a smooth function of ``l_i mu_j``), so
``uu^T M vv ~ sum_k (uu . A_k)(vv . B_k)`` at ``N r (R + C)``. The terms cancel (``M > 0``;
the first term overshoots its small entries by up to ``max M / min M``), so the products must
run in float64, and the rank follows from a bound for every item: with ``E = M - A B^T``,
``|uu^T E vv| <= ||E||_2 ||uu|| ||vv||`` and ``uu^T M vv >= min M ||uu|| ||vv||`` (``uu, vv >=
0``), so the relative error is at most ``||E||_2 / min M``; kept below float32's epsilon / 16
(with the float64 rounding, ``(R + C + r) eps64 sum_k s_k / min M``). In float32 the same
terms lose up to ``(R + C) eps32 sum_k s_k / min M``: 1 and more on the benchmark, useless.

Measured on the benchmark MLP (2 threads, loaded machine, 7 December 2026): ranks 10
(256 x 64) and 11 (256 x 256) at prior 1; at prior 1e-2 and 1e-4 no rank meets the bound
(``s_0 / min M`` of 3e6 and more: the float64 rounding of the terms alone exceeds it). At
prior 1 the contraction alone takes 2.4 ms in float64 at rank 11 against 3.9 ms dense in
float32 (4,096 items), but inside ``post(x)`` the float64 copies of ``uu`` and ``vv`` are fresh
memory every batch (page faults) and the skinny products run slower than alone: all/kron
``post(x)`` took 68 ms with the low-rank route against 62.5 ms without, in one process. It was
left out of the library; this script prints the ranks and times the contraction alone.
"""
# ruff: noqa: E402

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "src"))
sys.path.insert(0, os.path.join(HERE, ".."))
from _common import timings

from bt_laplace import fit_reward_posterior
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.testing import mlp, teacher_pairs, train_map

TOLERANCE = torch.finfo(torch.float32).eps / 16
EPS64 = torch.finfo(torch.float64).eps


def rank_needed(m: torch.Tensor) -> tuple[int | None, torch.Tensor, torch.Tensor]:
    """The fewest SVD terms of float64 ``m`` within :data:`TOLERANCE` (None if none), and the
    factors ``A (R, r)``, ``B (C, r)``."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    floor = float(m.min())
    tails = s.square().flip(0).cumsum(0).flip(0).sqrt().tolist() + [0.0]
    for r in range(1, s.numel() + 1):
        rounding = (sum(m.shape) + r) * EPS64 * float(s[:r].sum())
        if tails[r] + rounding <= TOLERANCE * floor:
            a, b = u[:, :r] * s[:r], vh[:r].T
            if float(torch.linalg.matrix_norm(m - a @ b.T)) + rounding <= TOLERANCE * floor:
                return r, a, b
    return None, u, vh.T


def best(fn, repeats: int = 20) -> float:
    """Best of :func:`_common.timings`, milliseconds."""
    return min(timings(fn, repeats)) * 1e3


def contraction_times(m: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> str:
    """``uu^T M vv`` for 4,096 items: dense in float32 against the float64 terms."""
    g = torch.Generator().manual_seed(0)
    uu, vv = torch.rand(4096, m.shape[0], generator=g), torch.rand(4096, m.shape[1], generator=g)
    m32, at, bt = m.float(), a.T.contiguous(), b.T.contiguous()
    dense = best(lambda: (uu @ m32).mul_(vv).sum(-1))
    low = best(lambda: (at @ uu.double().T).mul_(bt @ vv.double().T).sum(0))
    uu64, vv64 = uu.double(), vv.double()
    products = best(lambda: (at @ uu64.T).mul_(bt @ vv64.T).sum(0))
    return (
        f"  4,096 items: dense float32 {dense:.2f} ms, rank {a.shape[1]} float64 with casts "
        f"{low:.2f} ms, its products alone {products:.2f} ms"
    )


def main() -> None:
    torch.set_num_threads(2)
    x_train, y_train = teacher_pairs(64, 4000, seed=0)
    torch.manual_seed(0)
    model = PairwiseRewardModel(mlp(64, 256))
    train_map(model, x_train, y_train, epochs=3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train, y_train), batch_size=256
    )
    for prior in (1.0, 1e-2, 1e-4):
        post = fit_reward_posterior(
            model, loader, subset_of_weights="all", hessian_structure="kron",
            prior_precision=prior,
        )  # fmt: skip
        prec = post.laplace.posterior_precision
        for ls, delta in zip(prec.eigenvalues, prec.deltas, strict=True):
            if len(ls) != 2 or min(len(ls[0]), len(ls[1])) == 1:
                continue
            m = 1.0 / (torch.outer(ls[0].double(), ls[1].double()) + delta.double())
            r, a, b = rank_needed(m)
            kappa = float(m.max() / m.min())
            print(f"prior {prior:g}: M {tuple(m.shape)}, max/min {kappa:.3g}, rank {r}")
            if prior != 1.0 or m.shape != (256, 256) or r is None:
                continue
            print(contraction_times(m, a, b))


if __name__ == "__main__":
    main()
