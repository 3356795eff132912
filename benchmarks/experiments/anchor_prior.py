"""A Gaussian prior on the training items' rewards, ``f(x_i) ~ N(0, 1/a)`` besides the
weights' ``N(0, 1/lambda)``: the exact posterior's OOD AUROC, NLL and ECE at each ``a``, and
which ``a`` the Laplace evidence picks (issue 21, items 1-2).

Run from the repository root (needs the ``bench`` extra; about 1 minute a task at 2,000 pairs,
several for Warriner's 28,865 parameters)::

    PYTHONPATH=src python benchmarks/experiments/anchor_prior.py [--tasks a,b] [--seeds 1]

Bradley-Terry pairs pin only reward differences; a prior on the rewards of the training items
pins their level too, so that an item unlike them keeps a variance the training items lose
(laplace-torch's kron does something like it by accident: it treats the ``2N`` items as
independent samples). Everything is exact and dense in the ``M`` distinct training items: with
``J`` ``(M, P)`` their reward Jacobians, ``G = J J^T``, ``L`` the pairs' weighted graph Laplacian
and ``C = L + a I``, the posterior precision is ``lambda I + J^T C J``, the evidence (linearized
at the MAP, rewards ``J theta*``)

    log Z = -lambda |theta*|^2 / 2 - a |J theta*|^2 / 2 + log det(I + a G / lambda) / 2
            - log det(I + C^1/2 G C^1/2 / lambda) / 2

is maximized over ``lambda`` for each ``a``, and a query's variance is
``(|q|^2 - (C^1/2 J q)^T (lambda I + C^1/2 G C^1/2)^-1 (C^1/2 J q)) / lambda`` (Woodbury). ``a = 0``
is the all/full exact-evidence row of docs/results/heldout.md.
"""
# ruff: noqa: E402

import argparse
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from bench_heldout import map_fits
from realdata import ood_auroc, prob_metrics, setup_run

from bt_laplace.prior.kernel import laplacian
from bt_laplace.testing import item_jacobians

#: the prior precisions of the training items' rewards scored
PRECISIONS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)


def sqrt_psd(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalues and the square root of a symmetric positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh((mat + mat.T) / 2)
    values = values.clamp_min(0.0)
    return values, (vectors * values.sqrt()) @ vectors.T


def best_prior(evidence) -> float:
    """The ``lambda`` maximizing ``evidence(log lambda)``: a log grid, then ternary search."""
    log_lam = max((k / 10 for k in range(-60, 60)), key=evidence)
    lo, hi = log_lam - 0.1, log_lam + 0.1
    for _ in range(50):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        lo, hi = (a, hi) if evidence(a) < evidence(b) else (lo, b)
    return math.exp((lo + hi) / 2)


def run(name: str, seed: int, split: dict, model: torch.nn.Module) -> None:
    xtr = split["train"][0]
    items, index = torch.unique(xtr.reshape(-1, xtr.shape[-1]), dim=0, return_inverse=True)
    index, n_items = index.reshape(-1, 2), len(items)
    jac = item_jacobians(model, items)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    theta_sq, rewards_sq = float(theta.square().sum()), float((jac @ theta).square().sum())
    gram = jac @ jac.T
    with torch.no_grad():
        r = model.net(items).squeeze(-1)
    p = torch.sigmoid(r[index[:, 1]] - r[index[:, 0]])
    lap = laplacian(index, p * (1 - p), n_items)
    gram_values, gram_root = sqrt_psd(gram)
    eye = torch.eye(n_items, dtype=torch.float64)
    (xt, yt, _), xin, xout = split["test"], split["score_in"], split["score_out"]
    jq = item_jacobians(model, torch.cat([xin, xout]))
    dq = item_jacobians(model, xt[:, 1]) - item_jacobians(model, xt[:, 0])
    with torch.no_grad():
        margin = model(xt) @ torch.tensor([-1.0, 1.0], dtype=torch.float64)
    rows = []
    for a in PRECISIONS:
        spectrum = torch.linalg.eigvalsh(gram_root @ (lap + a * eye) @ gram_root).clamp_min(0.0)

        def evidence(log_lam: float, a: float = a, spectrum: torch.Tensor = spectrum) -> float:
            lam = math.exp(log_lam)
            return (
                -0.5 * lam * theta_sq - 0.5 * a * rewards_sq
                + 0.5 * float(torch.log1p(a * gram_values / lam).sum())
                - 0.5 * float(torch.log1p(spectrum / lam).sum())
            )  # fmt: skip

        lam = best_prior(evidence)
        rows.append((a, lam, evidence(math.log(lam))))
    top = max(e for _, _, e in rows)
    for a, lam, log_z in rows:
        _, root = sqrt_psd(lap + a * eye)
        factor = torch.linalg.cholesky(lam * eye + root @ gram @ root)

        def variance(q: torch.Tensor, lam: float = lam, root=root, factor=factor) -> torch.Tensor:
            cross = root @ (jac @ q.T)
            inside = (cross * torch.cholesky_solve(cross, factor)).sum(0)
            return ((q.square().sum(1) - inside) / lam).clamp_min(0.0)

        std = variance(jq).sqrt()
        prob = torch.sigmoid(margin / torch.sqrt(1 + math.pi / 8 * variance(dq)))
        m = prob_metrics(prob, yt)
        auroc = ood_auroc(std[: len(xin)], std[len(xin) :])
        pick = "  <- the evidence's" if log_z == top else ""
        print(
            f"{name} seed {seed}: a {a:<5g} lambda {lam:6.3g} log Z {log_z:10.1f}  NLL "
            f"{m['nll']:.4f}  ECE {m['ece']:.4f}  AUROC {auroc:.4f}{pick}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="car,mathach,exam,movielens")
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    setup_run()
    for name, seed, split, _, model in map_fits(args.tasks.split(","), args.seeds):
        run(name, seed, split, model)


if __name__ == "__main__":
    main()
