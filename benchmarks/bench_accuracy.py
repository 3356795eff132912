"""Accuracy of bt_laplace against brute force and against raw laplace-torch.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_accuracy.py [--quick]

Saves ``docs/data/accuracy.json`` and writes ``docs/results/accuracy.md`` from it
(``benchmarks/report.py``). Measures, on MAP-trained tanh MLP reward models (float64):

(a) curvature error against the exact Bradley-Terry GGN built by brute force
    (``torch.func.jacrev`` per-item Jacobians), per parameter block, with the
    nearest-Kronecker-product floor for the weight blocks;
(b) the marglik prior precision with the exact GGN, bt_laplace kron and laplace-torch kron;
(c) pair probabilities against Monte Carlo over the joint 2x2 Gaussian of the two rewards.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, environment, page_name, save
from laplace import Laplace
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace.fit import fit_reward_posterior
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.testing import (
    exact_ggn,
    exact_last_layer_ggn,
    item_jacobians,
    mlp,
    nearest_kronecker_floor,
    rel_err,
    train_map,
)

warnings.filterwarnings("ignore")
THREADS = 2
torch.set_num_threads(THREADS)
DTYPE = torch.float64
torch.set_default_dtype(DTYPE)

STRUCTS = [
    ("all", "diag"),
    ("all", "kron"),
    ("all", "full"),
    ("last_layer", "diag"),
    ("last_layer", "kron"),
    ("last_layer", "full"),
]


# ---------------------------------------------------------------------------- data and model
def make_task(d: int, n_pairs: int, seed: int):
    """Pairs from a random teacher reward; labels ~ Bernoulli(sigmoid(r1 - r0))."""
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():
        ref = teacher(torch.randn(4096, d)).squeeze(1)
        scale = 2.0 / ref.std()  # reward std 2: informative but noisy labels

        def reward(x: torch.Tensor) -> torch.Tensor:
            return (teacher(x.reshape(-1, d)).reshape(x.shape[:-1]) - ref.mean()) * scale

        x = torch.randn(n_pairs, 2, d)
        r = reward(x)
        y = torch.bernoulli(torch.sigmoid(r[:, 1] - r[:, 0])).long()
    return x, y


def train(d: int, h: int, x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int):
    torch.manual_seed(seed + 1)
    model = train_map(PairwiseRewardModel(mlp(d, h)), x, y, epochs=epochs)
    with torch.no_grad():
        logits = model(x)
        acc = float((logits.argmax(1) == y).float().mean())
        nll = float(nn.functional.cross_entropy(logits, y))
    return model, acc, nll


# ---------------------------------------------------------------------------- brute force
def curvature_matrix(la, structure: str) -> torch.Tensor:
    """The GGN estimate held by a fitted laplace-torch object (diag -> vector)."""
    if structure == "kron":
        return la.H_facs.to_matrix().detach()
    return la.H.detach()


def y_of(loader) -> torch.Tensor:
    return torch.cat([yb for _, yb in loader])


def evidence_optimum(eig: torch.Tensor, theta_sq: float, nll_sum: float) -> float:
    """Scalar prior precision maximizing laplace-torch's Laplace evidence for GGN eigenvalues.

    ``log Z(d) = -nll - 0.5 * (sum log(eig + d) - P log d + d ||theta||^2)``, maximized on a
    fine log grid (the optimum of a 1-D smooth function; no optimizer steps involved).
    """
    eig = eig.clamp_min(0)
    grid = torch.logspace(-4, 5, 9001)
    logdet = torch.log(eig[None, :] + grid[:, None]).sum(1) - eig.numel() * torch.log(grid)
    lml = -nll_sum - 0.5 * (logdet + grid * theta_sq)
    return float(grid[lml.argmax()])


# ---------------------------------------------------------------------------- fits
def fit_bt(model, loader, subset, structure, prior="marglik"):
    """bt_laplace posterior; the time is of a refit of the curvature alone (no marglik)."""
    post = fit_reward_posterior(
        model,
        loader,
        subset_of_weights=subset,
        hessian_structure=structure,
        prior_precision=prior,
        evidence="posterior",
    )
    t = time.perf_counter()
    post.laplace.fit(loader)
    return post, time.perf_counter() - t


def fit_lt(model, loader, subset, structure, marglik=False, backend=None):
    """Raw laplace-torch fit; returns (la or None, seconds, error message or None)."""
    kwargs = {} if backend is None else {"backend": backend}
    t = time.perf_counter()
    try:
        la = Laplace(
            model,
            "reward_modeling",
            subset_of_weights=subset,
            hessian_structure=structure,
            **kwargs,
        )
        la.fit(loader)
        if marglik:
            la.optimize_prior_precision(method="marglik")
    except Exception as err:  # noqa: BLE001 - report what laplace-torch does
        msg = f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
        return None, time.perf_counter() - t, msg
    return la, time.perf_counter() - t, None


# ---------------------------------------------------------------------------- pair probabilities
def mc_joint(mean, var, cov, n_samples: int, gen: torch.Generator, chunk: int = 100):
    """E[sigmoid(r1 - r0)] by sampling the joint 2x2 Gaussian (Cholesky, clamped)."""
    out = []
    for m, v, c in zip(mean.split(chunk), var.split(chunk), cov.split(chunk), strict=True):
        l00 = v[:, 0].clamp_min(0).sqrt()
        l10 = torch.where(l00 > 0, c / l00.clamp_min(1e-300), torch.zeros_like(c))
        l11 = (v[:, 1] - l10.square()).clamp_min(0).sqrt()
        z = torch.randn(n_samples, m.shape[0], 2, generator=gen)
        r0 = m[:, 0] + l00 * z[..., 0]
        r1 = m[:, 1] + l10 * z[..., 0] + l11 * z[..., 1]
        out.append(torch.sigmoid(r1 - r0).mean(0))
    return torch.cat(out)


def lt_probit(mean, var):
    """laplace-torch's reward-modeling probit: per-item scaling, then softmax (no covariance)."""
    kappa = 1 / torch.sqrt(1 + math.pi / 8 * var)
    return torch.softmax(kappa * mean, dim=1)[:, 1]


def pair_sets(d: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(n, 2, d, generator=g)
    x0 = torch.randn(n, d, generator=g)
    near = torch.stack([x0, x0 + 1e-2 * torch.randn(n, d, generator=g)], 1)
    return {"random": rand, "near-duplicate": near}


# ---------------------------------------------------------------------------- main
def run_config(d, h, args, out, curvature: bool, seed: int):
    n_pairs = args.n_pairs
    x, y = make_task(d, n_pairs, seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    t = time.perf_counter()
    model, acc, nll = train(d, h, x, y, seed, args.epochs)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = f"D={d}, H={h} ({n_params:,} params)"
    print(f"\n=== {cfg}: MAP train acc {acc:.3f}, NLL {nll:.3f}, {time.perf_counter() - t:.1f}s")
    out["configs"].append(
        {"model": cfg, "pairs": n_pairs, "epochs": args.epochs, "accuracy": acc, "nll": nll}
    )

    # bt_laplace fits (marglik prior)
    bt, bt_time = {}, {}
    for subset, structure in STRUCTS:
        if subset == "all" and structure == "full" and n_params > 8000:
            continue
        # laplace-torch's marglik optimizer on a dense 5k x 5k posterior takes many minutes on
        # 2 cores: above 2,000 parameters all/full gets the exact evidence optimum instead
        # (set in the curvature section from the eigenvalues of the exact GGN).
        prior = 1.0 if (subset, structure) == ("all", "full") and n_params > 2000 else "marglik"
        bt[(subset, structure)], bt_time[(subset, structure)] = fit_bt(
            model, loader, subset, structure, prior
        )
    if curvature:
        curvature_section(model, x, loader, cfg, bt, bt_time, out, n_params)
    probability_section(model, d, cfg, bt, args, out, seed)


def curvature_section(model, x, loader, cfg, bt, bt_time, out, n_params):
    t = time.perf_counter()
    h_all, h_ll = exact_ggn(model, x), exact_last_layer_ggn(model, x)
    print(f"exact GGN by brute force: {time.perf_counter() - t:.1f}s")

    # laplace-torch fits (default backend: CurvlinopsGGN)
    lt, lt_time, lt_err = {}, {}, {}
    for subset, structure in STRUCTS:
        if subset == "all" and structure == "full" and n_params > 2000:
            lt_err[(subset, structure)] = "skipped (CurvlinopsGGN full: ~200 s at 5k params)"
            continue
        la, sec, err = fit_lt(model, loader, subset, structure)
        lt[(subset, structure)], lt_time[(subset, structure)] = la, sec
        if err:
            lt_err[(subset, structure)] = err
        print(f"laplace-torch {subset}/{structure}: {sec:.1f}s {err or ''}")

    names = [n for n, _ in model.named_parameters()]
    shapes = [tuple(p.shape) for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    offs = [0]
    for s in sizes:
        offs.append(offs[-1] + s)

    # (a) per block, kron
    hk_bt = curvature_matrix(bt[("all", "kron")].laplace, "kron")
    la_k = lt.get(("all", "kron"))
    hk_lt = curvature_matrix(la_k, "kron") if la_k is not None else None
    for name, shape, a, b in zip(names, shapes, offs[:-1], offs[1:], strict=True):
        ex = h_all[a:b, a:b]
        row = {
            "model": cfg,
            "block": name,
            "shape": list(shape),
            "bt_err": rel_err(hk_bt[a:b, a:b], ex),
            "lt_err": rel_err(hk_lt[a:b, a:b], ex) if hk_lt is not None else float("nan"),
            "floor": nearest_kronecker_floor(ex, *shape) if len(shape) == 2 else None,
        }
        out["kron_blocks"].append(row)
        print("kron block", row)
    out["kron_whole"].append(
        {
            "model": cfg,
            "bt_err": rel_err(hk_bt, h_all),
            "lt_err": rel_err(hk_lt, h_all) if hk_lt is not None else None,
        }
    )

    # output bias curvature and diag / full errors
    bias = offs[-1] - 1
    row = {"model": cfg, "exact": float(h_all[bias, bias])}
    for lib in ("bt", "lt"):
        for structure in ("diag", "kron", "full"):
            la = bt.get(("all", structure)) if lib == "bt" else None
            la = la.laplace if la is not None else lt.get(("all", structure))
            if la is None:
                row[f"{lib} {structure}"] = None
                continue
            hm = curvature_matrix(la, structure)
            row[f"{lib} {structure}"] = float(hm[bias] if hm.ndim == 1 else hm[bias, bias])
    out["bias"].append(row)

    for lib, fits, times, errs in (
        ("bt_laplace", {k: v.laplace for k, v in bt.items()}, bt_time, {}),
        ("laplace-torch", lt, lt_time, lt_err),
    ):
        for subset, structure in STRUCTS:
            la = fits.get((subset, structure))
            exact = h_all if subset == "all" else h_ll
            row = {"model": cfg, "library": lib, "subset": subset, "structure": structure}
            if la is None:
                row["error"] = errs.get((subset, structure), "not run")
                out["structure_err"].append(row)
                continue
            hm = curvature_matrix(la, structure)
            row["err"] = (
                rel_err(hm, exact.diagonal()) if structure == "diag" else rel_err(hm, exact)
            )
            row["seconds"] = times.get((subset, structure), 0)
            if subset == "last_layer":
                row["head_bias"] = float(hm[-1] if hm.ndim == 1 else hm[-1, -1])
            out["structure_err"].append(row)

    # (b) marglik prior precision
    t = time.perf_counter()
    theta_sq = float(sum(p.detach().square().sum() for p in model.parameters()))
    with torch.no_grad():
        nll_sum = float(nn.functional.cross_entropy(model(x), y_of(loader), reduction="sum"))
    blockdiag = torch.zeros_like(h_all)
    for a, b in zip(offs[:-1], offs[1:], strict=True):
        blockdiag[a:b, a:b] = h_all[a:b, a:b]
    layer_diag = torch.zeros_like(h_all)
    for a, b in zip(offs[:-1:2], offs[2::2], strict=True):  # (weight, bias) of one layer
        layer_diag[a:b, a:b] = h_all[a:b, a:b]
    eigs = {
        "exact": torch.linalg.eigvalsh(h_all),
        "exact block-diag": torch.linalg.eigvalsh(blockdiag),
        "exact layer-diag": torch.linalg.eigvalsh(layer_diag),
        "exact diagonal": h_all.diagonal(),
        "bt kron": torch.linalg.eigvalsh(hk_bt),
    }
    if hk_lt is not None:
        eigs["lt kron"] = torch.linalg.eigvalsh(hk_lt)
    best = {k: evidence_optimum(v, theta_sq, nll_sum) for k, v in eigs.items()}
    # laplace-torch's own optimizer (Adam on log prior, 100 steps): bt fits ran it already
    priors = {
        f"bt {k}": float(bt[("all", k)].prior_precision)
        for k in ("diag", "kron", "full")
        if ("all", k) in bt
    }
    if n_params > 2000 and ("all", "full") in bt:  # see run_config
        del priors["bt full"]
        bt[("all", "full")].laplace.prior_precision = best["exact"]
    la_k2, _, _ = fit_lt(model, loader, "all", "kron", marglik=True)
    priors["lt kron"] = float(la_k2.prior_precision) if la_k2 is not None else float("nan")
    out["prior"].append({"model": cfg, "optimizer": priors, "evidence_optimum": best})
    print("priors", priors, best, f"{time.perf_counter() - t:.1f}s")

    # checks of the predictive against brute force (all/full and all/diag)
    xt = pair_sets(x.shape[-1], 200, 99)["random"]
    jt = item_jacobians(model, xt.reshape(-1, xt.shape[-1]))
    for structure in ("full", "diag"):
        post = bt.get(("all", structure))
        if post is None:
            continue
        la = post.laplace
        sigma = (
            la.posterior_covariance if structure == "full" else torch.diag(la.posterior_variance)
        )
        c = jt @ sigma @ jt.T
        c0 = c[0::2, 0::2].diagonal()
        c1 = c[1::2, 1::2].diagonal()
        c01 = c[0::2, 1::2].diagonal()
        _, var, cov = post.pair_moments(xt)
        e = max(rel_err(var[:, 0], c0), rel_err(var[:, 1], c1), rel_err(cov, c01))
        lt_p = la(xt, fitting=True, link_approx="probit")[:, 1]
        mean, var, _ = post.pair_moments(xt)
        e2 = float((lt_p - lt_probit(mean, var)).abs().max())
        out["checks"].append(
            {"model": cfg, "posterior": f"all/{structure}", "moments_err": e, "probit_diff": e2}
        )


def probability_section(model, d, cfg, bt, args, out, seed):
    sets = pair_sets(d, args.n_test, seed + 7)
    gen = torch.Generator().manual_seed(seed + 11)
    for (subset, structure), post in bt.items():
        marglik_prior = float(post.prior_precision.reshape(-1)[0])
        for prior_name, prior in (("marglik", marglik_prior), ("0.1", 0.1)):
            post.laplace.prior_precision = prior
            for set_name, xs in sets.items():
                mean, var, cov = post.pair_moments(xs)
                truth = mc_joint(mean, var, cov, args.n_mc, gen)
                probs = {
                    "bt probit": post.preference_probability(xs, link_approx="probit"),
                    "bt mc": post.preference_probability(
                        xs, link_approx="mc", n_samples=20_000, generator=gen
                    ),
                    "lt probit": lt_probit(mean, var),
                    "MAP": torch.sigmoid(mean[:, 1] - mean[:, 0]),
                }
                map_side = probs["MAP"] > 0.5

                def flips(p, map_side=map_side):
                    return float(((p > 0.5) != map_side).float().mean())

                vd = (var[:, 0] + var[:, 1] - 2 * cov).clamp_min(0)
                row = {
                    "model": cfg,
                    "posterior": f"{subset}/{structure}",
                    "prior_name": prior_name,
                    "prior": prior,
                    "pairs": set_name,
                    "var_mean": float(var.mean()),
                    "var_diff_mean": float(vd.mean()),
                    # absolute error against the Monte Carlo truth: [mean, max]
                    "err": {
                        k: [float((p - truth).abs().mean()), float((p - truth).abs().max())]
                        for k, p in probs.items()
                    },
                    "flips": {
                        "bt probit": flips(probs["bt probit"]),
                        "lt probit": flips(probs["lt probit"]),
                        "MC truth": flips(truth),
                    },
                }
                out["probs"].append(row)
                print("probs", row["posterior"], prior_name, set_name, row["err"])
        post.laplace.prior_precision = marglik_prior


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small config only, fewer pairs")
    ap.add_argument("--out", default=str(RESULTS / "accuracy.md"), help=OUT_HELP)
    args = ap.parse_args()
    args.n_pairs = 1500 if args.quick else 3000
    args.epochs = 5
    args.n_test = 500 if args.quick else 2000
    args.n_mc = 20_000 if args.quick else 50_000
    env = environment(THREADS)
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        k: []
        for k in (
            "configs",
            "kron_blocks",
            "kron_whole",
            "bias",
            "structure_err",
            "prior",
            "checks",
            "probs",
        )
    }
    run_config(8, 32, args, out, curvature=True, seed=0)
    if not args.quick:
        run_config(16, 64, args, out, curvature=True, seed=1)
        run_config(64, 256, args, out, curvature=False, seed=2)
    out["environment"] = env
    out["elapsed"] = time.perf_counter() - t0
    out["args"] = {k: getattr(args, k) for k in ("quick", "n_pairs", "epochs", "n_test", "n_mc")}
    save(page_name(args.out), "accuracy", out)
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
