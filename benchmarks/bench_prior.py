"""Marginal-likelihood prior precision: exact GGN vs block-diagonal vs Kronecker, up to 82k params.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_prior.py [--pairs 3000]

Writes ``docs/prior.md``. The exact Laplace evidence needs ``log det(H + delta I)`` of the
``P x P`` Bradley-Terry GGN ``H = dJ^T W dJ``; its non-zero eigenvalues are those of the
``N x N`` pair kernel ``K = W^1/2 dJ dJ^T W^1/2``, built here from per-layer activations and
output gradients (``dJ_n . dJ_m`` is a sum of four products of Gram matrices per layer), so the
exact optimum is computable for the 82,689-parameter benchmark MLP with a few thousand pairs.
Restricting ``K`` to one parameter tensor gives that tensor's diagonal block of ``H``, hence the
exact optimum of a block-diagonal posterior whose blocks are all exact.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import command_line, environment_lines, fmt, md_table  # noqa: E402
from _teacher import make_data, train_map  # noqa: E402
from laplace import Laplace  # noqa: E402

import bt_laplace as btl  # noqa: E402
from bt_laplace._taps import pair_split  # noqa: E402
from bt_laplace.curvature import BradleyTerryGGN  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_default_dtype(torch.float64)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(8, 32), (16, 64), (32, 128), (64, 256)]


def pair_kernels(model: btl.PairwiseRewardModel, x: torch.Tensor, y: torch.Tensor):
    """One ``N x N`` kernel per parameter tensor: ``K_t = W^1/2 dJ_t dJ_t^T W^1/2``."""
    backend = BradleyTerryGGN(model, "classification")
    _, w, taps, _ = backend._pair_pass(x, y)
    assert taps is not None
    root = w.sqrt()[:, None]
    kernels = []
    for slot in backend.taps.slots:
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


def run(d: int, h: int, n: int, seed: int) -> list[str]:
    t0 = time.perf_counter()
    x, y = make_data(d, n, seed)
    model = train_map(d, h, x, y)
    n_params = sum(p.numel() for p in model.parameters())
    theta_sq = float(sum(p.detach().square().sum() for p in model.parameters()))
    kernels = pair_kernels(model, x, y)
    exact = evidence_optimum([torch.linalg.eigvalsh(sum(kernels))], theta_sq)
    blocks = evidence_optimum([torch.linalg.eigvalsh(k) for k in kernels], theta_sq)
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    bt = {
        s: float(
            btl.fit_reward_posterior(
                model, loader, subset_of_weights="all", hessian_structure=s
            ).prior_precision
        )
        for s in ("kron", "diag")
    }
    t1 = time.perf_counter()
    ex = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure="kron", evidence="exact"
    )
    t_exact = time.perf_counter() - t1
    t1 = time.perf_counter()
    btl.fit_reward_posterior(model, loader, subset_of_weights="all", hessian_structure="kron")
    t_kron = time.perf_counter() - t1
    bt_exact = float(ex.prior_precision)
    la = Laplace(model, "reward_modeling", subset_of_weights="all", hessian_structure="kron")
    la.fit(loader)
    la.optimize_prior_precision(method="marglik")
    lt = float(la.prior_precision)

    def off(v: float) -> str:
        return f"{fmt(v)} ({100 * (v / exact - 1):+.1f}%)"

    row = [
        f"D={d}, H={h} ({n_params:,} params)",
        fmt(exact),
        off(blocks),
        off(bt["kron"]) + (" ok" if abs(bt["kron"] / exact - 1) <= 0.1 else " MISS"),
        f"{100 * (bt['kron'] / blocks - 1):+.1f}%",
        off(lt),
        off(bt["diag"]),
        off(bt_exact) + (" ok" if abs(bt_exact / exact - 1) <= 0.1 else " MISS"),
        f"{t_kron:.2f} / {t_exact:.2f}",
        f"{time.perf_counter() - t0:.1f}",
    ]
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000, help="training pairs")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "prior.md"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = [run(d, h, args.pairs, seed) for seed, (d, h) in enumerate(SIZES)]
    text = "\n".join(
        [
            "# Marginal-likelihood prior precision: exact GGN vs block-diagonal vs Kronecker",
            "",
            *environment_lines(command_line(), torch.get_num_threads()),
            f"- Total run time: {time.perf_counter() - t0:.0f} s",
            "",
            f"MLPs `D -> H -> H -> 1` (tanh, float64), MAP-trained (AdamW, 5 epochs) on "
            f"{args.pairs} pairs from a random teacher. Scalar prior precision maximizing the "
            "Laplace evidence. *exact*: the evidence with the exact Bradley-Terry GGN, its "
            "log-determinant from the eigenvalues of the N x N pair kernel. *exact "
            "block-diagonal*: the same GGN cut to its diagonal blocks per parameter tensor, "
            "every block exact (the best any per-tensor block-diagonal posterior can do). "
            "bt_laplace and laplace-torch: what `fit_reward_posterior(..., "
            "prior_precision='marglik')` and laplace-torch's `optimize_prior_precision` return "
            "(100 Adam steps); *evidence='exact'*: `fit_reward_posterior(..., "
            "evidence='exact')`, which maximizes the exact-GGN evidence whatever the posterior "
            "structure (bt_laplace.evidence: pair kernel from activations and output gradients, "
            "root of the stationarity condition), computed by the library independently of "
            "this script's kernel. Goal of issue 3: within 10% of exact.",
            "",
            md_table(
                [
                    "model",
                    "exact",
                    "exact block-diagonal",
                    "bt_laplace kron, default evidence (goal within 10%)",
                    "bt kron vs exact block-diagonal",
                    "laplace-torch kron",
                    "bt_laplace diag",
                    "bt_laplace kron, evidence='exact'",
                    "fit + prior s: kron / kron exact",
                    "s",
                ],
                rows,
            ),
            "",
            "Cutting the GGN into per-tensor blocks alone moves the optimum by the amount in the "
            "third column: the covariance between layers, which no block-diagonal (Kronecker or "
            "diagonal) posterior keeps, is what separates bt kron from the exact prior; the "
            "Kronecker error within the blocks adds the difference in the fifth column. "
            "`evidence='exact'` removes both: it costs one more pass over the pairs and an "
            "N x N eigendecomposition (the time column: fit plus prior with the posterior's own "
            "evidence, then with the exact one).",
            "",
        ]
    )
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
