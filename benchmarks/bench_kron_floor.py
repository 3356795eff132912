"""Kronecker factors against the nearest-Kronecker floor, matrix-free, up to the 64-256-256-1 MLP.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_kron_floor.py [--pairs 3000]

Saves ``docs/data/kron_floor.json`` and writes ``docs/results/kron_floor.md`` from it
(``benchmarks/report.py``). For every ``nn.Linear`` weight ``(out, in)`` of MAP-trained
tanh MLPs ``D -> H -> H -> 1`` (float64, trained as in bench_prior.py), it compares the
Kronecker factors ``G (out x out) x A (in x in)`` of bt_laplace and of laplace-torch with the
exact Bradley-Terry GGN block

    B = sum_n w_n vec(dJ_n) vec(dJ_n)^T,   dJ_n = g1 a1^T - g0 a0^T,   w_n = p (1 - p),

relative to the nearest-Kronecker-product floor ``min_{G, A} ||B - G x A||_F / ||B||_F``.
Neither ``B`` nor its Van Loan-Pitsianis rearrangement ``R(B)`` is formed (a 256 x 256 block
is 65,536 x 65,536); everything comes from the per-item activations ``a_i`` and output
gradients ``g_i`` (``s_1 = 1``, ``s_0 = -1``):

- ``||B||_F^2 = sum_{n,m} w_n w_m (dJ_n . dJ_m)^2`` with
  ``dJ_n . dJ_m = sum_{i,j} s_i s_j (g_i^n . g_j^m)(a_i^n . a_j^m)`` (an ``N x N`` kernel);
- ``<B, G x A> = sum_n w_n sum_{i,j} s_i s_j (g_i^T G g_j)(a_i^T A a_j)``,
  ``||G x A||_F = ||G||_F ||A||_F``;
- ``floor^2 = 1 - sigma_1(R(B))^2 / ||B||_F^2``, ``sigma_1`` by power iteration with the
  products ``R(B) vec(A) = vec(sum_n w_n sum_{i,j} s_i s_j (a_i^T A a_j) g_i g_j^T)`` and
  ``R(B)^T vec(G)`` (the same with the roles of ``a`` and ``g`` swapped).

A float64 self-check on the two smallest models compares every matrix-free number with the dense
block built from ``torch.func.jacrev`` Jacobians and the SVD of the dense ``R(B)``.
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

from bt_laplace.fit import fit_reward_posterior
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.testing import (
    frob_sq,
    item_jacobians,
    item_taps,
    kron_rel_error,
    kronecker_rearrangement,
    mlp,
    teacher_pairs,
    top_singular,
    train_map,
)

warnings.filterwarnings("ignore")
THREADS = 2
torch.set_num_threads(THREADS)
torch.set_default_dtype(torch.float64)
SIZES = [(8, 32), (16, 64), (32, 128), (64, 256)]


def dense_block(a: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The exact block for small ones (a layer with one output, or a bias with ``a = 1``)."""
    dj = (g[:, 1, :, None] * a[:, 1, None, :] - g[:, 0, :, None] * a[:, 0, None, :]).flatten(1)
    return (dj * w[:, None]).T @ dj


def kfac_pair(kfac) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """laplace-torch ``Kron`` entry as ``Kron.to_matrix`` reads it: ``kron(F0, F1)`` or ``F0``."""
    f0 = kfac[0] if kfac[0].ndim > 1 else kfac[0].diag()
    if len(kfac) == 1:
        return f0.detach()
    f1 = kfac[1] if kfac[1].ndim > 1 else kfac[1].diag()
    return f0.detach(), f1.detach()


# ---------------------------------------------------------------------------- dense self-check
def self_check(model, x, w, taps, facs) -> tuple[list[dict[str, Any]], float]:
    """Matrix-free numbers vs the dense block from jacrev Jacobians, per weight block."""
    n, _, d = x.shape
    jac = item_jacobians(model.net, x.reshape(2 * n, d), chunk=2 * n)
    with torch.no_grad():
        logits = model(x)
    p = torch.sigmoid(logits[:, 1] - logits[:, 0])
    w_dense = p * (1 - p)
    rows, worst = [], float(w_dense.sub(w).abs().max() / w_dense.abs().max())
    start, cols = 0, {}
    for name, v in model.net.named_parameters():
        cols[name] = slice(start, start + v.numel())
        start += v.numel()
    names = [k for k, v in model.net.named_parameters() if v.ndim == 2]
    for (a, g), name in zip(taps, names, strict=True):
        o, i = g.shape[-1], a.shape[-1]
        if o == 1 or i == 1:
            continue
        j = jac[:, cols[name]]
        dj = j[1::2] - j[0::2]
        blk = (dj * w_dense[:, None]).T @ dj
        s = torch.linalg.svdvals(kronecker_rearrangement(blk, o, i))
        dense = {
            "||B||": float(blk.norm()),
            "floor": float(s[1:].square().sum().sqrt() / s.norm()),
            "sigma_1": float(s[0]),
        }
        b_sq = frob_sq(a, g, w)
        sigma, *_ = top_singular(a, g, w)
        free = {
            "||B||": b_sq**0.5,
            "floor": max(1 - sigma**2 / b_sq, 0.0) ** 0.5,
            "sigma_1": sigma,
        }
        for lib, (gf, af) in facs[name].items():
            dense[f"{lib} err"] = float((torch.kron(gf, af) - blk).norm() / blk.norm())
            free[f"{lib} err"] = kron_rel_error(a, g, w, b_sq, gf, af)
        diffs = {k: abs(free[k] / dense[k] - 1) for k in dense}
        worst = max(worst, *diffs.values())
        rows.append({"layer": name, "shape": [o, i], "dense": dense, "difference": diffs})
    return rows, worst


# ---------------------------------------------------------------------------- main
def run(d: int, h: int, n: int, seed: int, check: bool, out: dict) -> None:
    t0 = time.perf_counter()
    x, y = teacher_pairs(d, n, seed)
    model = train_map(PairwiseRewardModel(mlp(d, h)), x, y)
    with torch.no_grad():
        logits = model(x)
        acc = float((logits.argmax(1) == y).double().mean())
    n_params = sum(p.numel() for p in model.parameters())
    cfg = f"D={d}, H={h} ({n_params:,} params)"
    t_train = time.perf_counter() - t0

    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    t1 = time.perf_counter()
    post = fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure="kron", evidence="posterior"
    )
    t_bt = time.perf_counter() - t1
    t1 = time.perf_counter()
    la = Laplace(model, "reward_modeling", subset_of_weights="all", hessian_structure="kron")
    la.fit(loader)
    t_lt = time.perf_counter() - t1
    bt_kfacs = post.laplace.H_facs.kfacs
    lt_kfacs = la.H_facs.kfacs

    w, taps = item_taps(model.net, x)
    names = [k for k, _ in model.net.named_parameters()]
    shapes = [tuple(p.shape) for p in model.net.parameters()]
    assert len(bt_kfacs) == len(lt_kfacs) == len(names)
    prefixes = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in names))  # one per nn.Linear
    facs = {}
    t1 = time.perf_counter()
    for name, shape, kb, kl in zip(names, shapes, bt_kfacs, lt_kfacs, strict=True):
        a, g = taps[prefixes.index(name.rsplit(".", 1)[0])]
        bt, lt = kfac_pair(kb), kfac_pair(kl)
        row: dict[str, Any] = {"model": cfg, "layer": name, "shape": list(shape)}
        if len(shape) == 1:  # bias: a = 1, a dense (out x out) block
            blk = dense_block(torch.ones(n, 2, 1), g, w)
            est = [torch.kron(*f) if isinstance(f, tuple) else f for f in (bt, lt)]
            row["exact_zero"] = float(blk.norm()) == 0  # head bias: cancels in r(x1) - r(x0)
            row["bt_err"], row["lt_err"] = (
                float(e.norm()) if row["exact_zero"] else float((e - blk).norm() / blk.norm())
                for e in est
            )
            out["bias"].append(row)
            continue
        o, i = shape
        for lib, (gf, af) in (("bt", bt), ("lt", lt)):
            assert gf.shape == (o, o) and af.shape == (i, i), (lib, name, gf.shape, af.shape)
        facs[name] = {"bt": bt, "lt": lt}
        if o == 1 or i == 1:  # the block is a Kronecker product itself: floor 0, dense check
            blk = dense_block(a, g, w)
            row["bt_err"] = float((torch.kron(*bt) - blk).norm() / blk.norm())
            row["lt_err"] = float((torch.kron(*lt) - blk).norm() / blk.norm())
            out["blocks"].append(row)
            continue
        t2 = time.perf_counter()
        b_sq = frob_sq(a, g, w)
        sigma, _, _, its, resid = top_singular(a, g, w)
        row["floor"] = max(1 - sigma**2 / b_sq, 0.0) ** 0.5
        row["bt_err"] = kron_rel_error(a, g, w, b_sq, *bt)
        row["lt_err"] = kron_rel_error(a, g, w, b_sq, *lt)
        row.update(iterations=its, residual=resid, seconds=time.perf_counter() - t2)
        out["blocks"].append(row)
        print(row, flush=True)
    t_eval = time.perf_counter() - t1
    t1 = time.perf_counter()
    if check:
        rows, worst = self_check(model, x, w, taps, facs)
        out["check"] += [{"model": cfg, **r} for r in rows]
        out["check_worst"] = max(out.get("check_worst", 0.0), worst)
        print(f"self-check: worst relative difference {worst:.2e}", flush=True)
        assert worst < 1e-9, f"matrix-free vs dense self-check failed: {worst:.2e}"
    out["configs"].append(
        {
            "model": cfg,
            "accuracy": acc,
            "train_s": t_train,
            "bt_fit_s": t_bt,
            "lt_fit_s": t_lt,
            "matrix_free_s": t_eval,
            "check_s": time.perf_counter() - t1 if check else None,
            "total_s": time.perf_counter() - t0,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000, help="training pairs")
    parser.add_argument("--out", default=str(RESULTS / "kron_floor.md"), help=OUT_HELP)
    args = parser.parse_args()
    env = environment(THREADS)
    t0 = time.perf_counter()
    out: dict = {"configs": [], "blocks": [], "bias": [], "check": []}
    for seed, (d, h) in enumerate(SIZES):
        run(d, h, args.pairs, seed, check=seed <= 1, out=out)
    out.update(environment=env, elapsed=time.perf_counter() - t0, pairs=args.pairs)
    save(page_name(args.out), "kron_floor", out)
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
