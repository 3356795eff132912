"""Marginal-likelihood prior precision: exact GGN vs block-diagonal vs Kronecker, up to 82k params.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_prior.py [--pairs 3000]

Saves ``docs/data/prior.json`` and writes ``docs/results/prior.md`` from it
(``benchmarks/report.py``).

The exact Laplace evidence needs ``log det(H + delta I)`` of the
``P x P`` Bradley-Terry GGN ``H = dJ^T W dJ``; its non-zero eigenvalues are those of the
``N x N`` pair kernel ``K = W^1/2 dJ dJ^T W^1/2``, built here from per-layer activations and
output gradients (``dJ_n . dJ_m`` is a sum of four products of Gram matrices per layer), so the
exact optimum is computable for the 82,689-parameter benchmark MLP with a few thousand pairs.
Restricting ``K`` to one parameter tensor gives that tensor's diagonal block of ``H``, hence the
exact optimum of a block-diagonal posterior whose blocks are all exact.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, environment, page_name, save
from laplace import Laplace
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace._layer_io import pair_split
from bt_laplace.curvature import BradleyTerryGGN
from bt_laplace.fit import fit_reward_posterior
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.testing import mlp, teacher_pairs, train_map

warnings.filterwarnings("ignore")
torch.set_default_dtype(torch.float64)
SIZES = [(8, 32), (16, 64), (32, 128), (64, 256)]


def pair_kernels(model: PairwiseRewardModel, x: torch.Tensor, y: torch.Tensor):
    """One ``N x N`` kernel per parameter tensor: ``K_t = W^1/2 dJ_t dJ_t^T W^1/2``."""
    backend = BradleyTerryGGN(model, "classification")
    _, w, taps, _ = backend.pair_pass(x, y)
    assert taps is not None
    root = w.sqrt()[:, None]
    kernels = []
    for slot in backend.layer_io.slots:
        g0, g1 = (g * root for g in pair_split(taps.grads[slot.layer]))
        if slot.kind == "bias":
            kernels.append((g1 - g0) @ (g1 - g0).T)
            continue
        a0, a1 = pair_split(taps.acts[slot.layer])
        kernels.append(
            (g1 @ g1.T) * (a1 @ a1.T)
            + (g0 @ g0.T) * (a0 @ a0.T)
            - (g1 @ g0.T) * (a1 @ a0.T)
            - (g0 @ g1.T) * (a0 @ a1.T)
        )
    return kernels


def evidence_optimum(eigs: list[torch.Tensor], theta_sq: float) -> float:
    """Scalar prior maximizing ``-0.5 (sum log(1 + mu / d) + d ||theta||^2)`` (grid + refine)."""
    mu = torch.cat(eigs).clamp_min(0.0)

    def neg(d: torch.Tensor) -> torch.Tensor:
        return torch.log1p(mu[None, :] / d[:, None]).sum(1) + d * theta_sq

    grid = torch.logspace(-3, 4, 1000)
    best = grid[neg(grid).argmin()]
    fine = torch.linspace(float(best) * 0.98, float(best) * 1.02, 2001)
    return float(fine[neg(fine).argmin()])


def run(d: int, h: int, n: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    x, y = teacher_pairs(d, n, seed)
    model = train_map(PairwiseRewardModel(mlp(d, h)), x, y)
    n_params = sum(p.numel() for p in model.parameters())
    theta_sq = float(sum(p.detach().square().sum() for p in model.parameters()))
    kernels = pair_kernels(model, x, y)
    exact = evidence_optimum([torch.linalg.eigvalsh(sum(kernels))], theta_sq)
    blocks = evidence_optimum([torch.linalg.eigvalsh(k) for k in kernels], theta_sq)
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    bt = {
        s: float(
            fit_reward_posterior(
                model, loader, subset_of_weights="all", hessian_structure=s, evidence="posterior"
            ).prior_precision
        )
        for s in ("kron", "diag")
    }
    t1 = time.perf_counter()
    ex = fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure="kron", evidence="exact"
    )
    t_exact = time.perf_counter() - t1
    t1 = time.perf_counter()
    fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure="kron", evidence="posterior"
    )
    t_kron = time.perf_counter() - t1
    la = Laplace(model, "reward_modeling", subset_of_weights="all", hessian_structure="kron")
    la.fit(loader)
    la.optimize_prior_precision(method="marglik")
    row = {
        "model": f"D={d}, H={h} ({n_params:,} params)",
        "exact": exact,
        "exact_blocks": blocks,
        "bt_kron": bt["kron"],
        "lt_kron": float(la.prior_precision),
        "bt_diag": bt["diag"],
        "bt_kron_exact_evidence": float(ex.prior_precision),
        "kron_s": t_kron,
        "kron_exact_evidence_s": t_exact,
        "seconds": time.perf_counter() - t0,
    }
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000, help="training pairs")
    parser.add_argument("--out", default=str(RESULTS / "prior.md"), help=OUT_HELP)
    args = parser.parse_args()
    env = environment(torch.get_num_threads())
    t0 = time.perf_counter()
    rows = [run(d, h, args.pairs, seed) for seed, (d, h) in enumerate(SIZES)]
    results = {"environment": env, "elapsed": time.perf_counter() - t0, "pairs": args.pairs}
    save(page_name(args.out), "prior", {**results, "rows": rows})
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
