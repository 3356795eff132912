#!/usr/bin/env python
"""Speed and memory benchmark of bt_laplace against MAP training, deep ensembles and laplace-torch.

Usage (from the repository root, with the project's own dependencies and matplotlib)::

    python benchmarks/bench_speed.py                     # full run, ~15 min on 2 CPU cores
    python benchmarks/bench_speed.py --quick             # reduced grid, ~2-3 min on 2 CPU cores
    python benchmarks/bench_speed.py --device cuda       # same on a CUDA GPU (see run_gpu.sh)

It saves its measurements to ``docs/data/<page>.json`` and writes from them
(``benchmarks/report.py``) a markdown report (``--out``, default
``docs/results/benchmarks.md``) and a plot (``--plot``, default
``docs/results/benchmark_scaling.png``, beside the report).

What is measured, all on the benchmark MLP (D=64 -> 256 -> 256 -> 1, tanh; 82,689 parameters)
trained with MAP (AdamW, batch 256) on synthetic pairs labelled by a random teacher MLP with
``y ~ Bernoulli(sigmoid(r_teacher(x_1) - r_teacher(x_0)))``:

* MAP training: one epoch, the full training run, and a 5-member deep ensemble.
* Fit (curvature + ``fit``) of bt_laplace and raw laplace-torch for all/diag, all/kron,
  last_layer/kron, last_layer/diag, last_layer/full, as a ratio to one MAP epoch; marglik prior
  optimization as a ratio to the fit. Raw laplace-torch runs are capped (``--cap``): a fit on
  one probe batch is timed first and the full fit is skipped when the linear extrapolation
  exceeds the cap.
* Prediction: ``post(x)`` (mean and variance) at batch 1, 64, 4096 against the plain MAP forward
  ``model(x)`` under ``torch.no_grad``; raw ``la(x)``; ``post.preference_probability`` on pairs
  holding the same number of items.
* Peak memory of prediction against the number of items, each point in a fresh subprocess
  (CPU: the process's peak RSS above its RSS just before the call, reset through
  ``/proc/self/clear_refs``; CUDA: ``torch.cuda.max_memory_allocated`` above the allocation
  before the call).
* Scaling of fit time with the number of pairs and with the hidden width.
* Total cost of a Bayesian reward model (MAP training + fit + marglik) against MAP training.

Timings use ``time.perf_counter`` with ``torch.cuda.synchronize`` around them on CUDA; each
number is the median of repeats.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

import report  # noqa: E402
from _common import OUT_HELP, environment, fmt_b, fmt_s, fmt_x, page_name, save  # noqa: E402

from bt_laplace.fit import fit_reward_posterior  # noqa: E402
from bt_laplace.model import PairwiseRewardModel  # noqa: E402
from bt_laplace.prior import optimize_marglik  # noqa: E402
from bt_laplace.testing import bradley_terry_epoch, mlp  # noqa: E402

warnings.filterwarnings("ignore")  # laplace-torch's link_approx notices etc.

D = 64
BATCH = 256
BENCH_HIDDEN = 256
BENCH_PARAMS = 82_689
CONFIGS = [
    ("all", "diag"),
    ("all", "kron"),
    ("last_layer", "kron"),
    ("last_layer", "diag"),
    ("last_layer", "full"),
]

FULL = dict(
    n_main=10_000,
    epochs=5,
    ensemble=5,
    fit_repeats=3,
    pairs_grid=[1_000, 10_000, 100_000],
    hidden_grid=[32, 64, 128, 256],
    hidden_epochs=2,
    pred_batches=[1, 64, 4096],
    mem_items=[256, 512, 1_000, 2_000, 4_000],
    mem_items_raw=[256, 512, 1_000, 2_000, 4_000],
    mem_bt=CONFIGS[:3],
    mem_raw=[("all", "diag", "AsdlGGN"), ("all", "kron", "default")],
    cap=60.0,
    mem_cap_gib=3.0,
    raw_scaling=[("all", "kron", "default"), ("all", "diag", "AsdlGGN")],
)
QUICK = dict(
    n_main=4_000,
    epochs=3,
    ensemble=5,
    fit_repeats=1,
    pairs_grid=[1_000, 10_000],
    hidden_grid=[32, 128, 256],
    hidden_epochs=1,
    pred_batches=[1, 64, 4096],
    mem_items=[1_000, 2_000, 4_000],
    mem_items_raw=[256, 512],
    mem_bt=CONFIGS[:2],
    mem_raw=[("all", "kron", "default")],
    cap=10.0,
    mem_cap_gib=2.0,
    raw_scaling=[("all", "kron", "default")],
)
RAW_VARIANTS = [  # (subset, structure, backend name); "default" = laplace-torch's own default
    ("all", "diag", "default"),
    ("all", "diag", "AsdlGGN"),
    ("all", "kron", "default"),
    ("all", "kron", "AsdlGGN"),
    ("last_layer", "kron", "default"),
    ("last_layer", "diag", "default"),
    ("last_layer", "diag", "AsdlGGN"),
    ("last_layer", "full", "default"),
]


# ---------------------------------------------------------------------------------- utilities
class Clock:
    """perf_counter timings, synchronized on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def once(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def median(
        self,
        fn: Callable[[], Any],
        *,
        min_repeats: int = 5,
        max_repeats: int = 2000,
        min_time: float = 0.4,
        warmup: int = 2,
    ) -> float:
        for _ in range(warmup):
            fn()
        times: list[float] = []
        while len(times) < min_repeats or (sum(times) < min_time and len(times) < max_repeats):
            times.append(self.once(fn)[0])
        return statistics.median(times)

    def paired(
        self,
        fa: Callable[[], Any],
        fb: Callable[[], Any],
        *,
        min_repeats: int = 5,
        max_repeats: int = 2000,
        min_time: float = 0.4,
        warmup: int = 2,
    ) -> tuple[float, float]:
        """Medians of ``fa`` and ``fb`` timed alternately, so load changes hit both alike."""
        for _ in range(warmup):
            fa()
            fb()
        ta: list[float] = []
        tb: list[float] = []
        while len(ta) < min_repeats or (sum(ta) + sum(tb) < min_time and len(ta) < max_repeats):
            ta.append(self.once(fa)[0])
            tb.append(self.once(fb)[0])
        return statistics.median(ta), statistics.median(tb)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pair_loader(x: torch.Tensor, y: torch.Tensor, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """DataLoader of ``(x (B, 2, D), y (B,))`` that slices whole batches (no per-row collation).

    ``len(loader.dataset)`` is the number of pairs, as laplace-torch and bt_laplace expect.
    """
    ds = TensorDataset(x, y)
    sampler: Any
    if shuffle:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(ds)
    return DataLoader(ds, batch_size=None, sampler=BatchSampler(sampler, BATCH, drop_last=False))


def make_data(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs from a random teacher MLP; label = index of the preferred item."""
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(D, 64), nn.Tanh(), nn.Linear(64, 1))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        x = torch.randn(n, 2, D, generator=g)
        r = teacher(x.reshape(-1, D)).reshape(n, 2)
        r = 2.0 * r / (r[:, 1] - r[:, 0]).std()  # logit spread ~2
        y = torch.bernoulli(torch.sigmoid(r[:, 1] - r[:, 0]), generator=g).long()
    return x.to(device), y.to(device)


def train_map(
    hidden: int, x: torch.Tensor, y: torch.Tensor, epochs: int, clock: Clock, seed: int
) -> tuple[PairwiseRewardModel, list[float]]:
    """MAP training with AdamW, batch 256; returns the model and the time of each epoch."""
    torch.manual_seed(seed)
    model = PairwiseRewardModel(mlp(D, hidden)).to(x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loader = pair_loader(x, y, shuffle=True, seed=seed)

    def epoch() -> None:
        model.train()
        bradley_terry_epoch(model, loader, opt)

    times = [clock.once(epoch)[0] for _ in range(epochs)]
    model.eval()
    return model, times


def short_error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"fails: {type(exc).__name__}: {msg[:70]}"


def backend_cls(name: str) -> Any:
    if name == "default":
        return None
    import laplace.curvature as lc

    return getattr(lc, name)


def raw_laplace(model: nn.Module, subset: str, structure: str, backend: str) -> Any:
    from laplace import Laplace

    kw = {} if backend == "default" else {"backend": backend_cls(backend)}
    return Laplace(
        model, "reward_modeling", subset_of_weights=subset, hessian_structure=structure, **kw
    )


def raw_backend_name(la: Any) -> str:
    return getattr(la, "_backend_cls", type(None)).__name__


def fit_bt(model: nn.Module, loader: DataLoader, subset: str, structure: str) -> Any:
    return fit_reward_posterior(
        model, loader, subset_of_weights=subset, hessian_structure=structure, prior_precision=1.0
    )


def time_marglik(la: Any, clock: Clock) -> float:
    """Time laplace-torch's own marglik prior optimization (raw laplace-torch runs)."""
    la.prior_precision = 1.0
    return clock.once(lambda: la.optimize_prior_precision(method="marglik"))[0]


def time_bt_marglik(la: Any, clock: Clock) -> float:
    """Time bt_laplace's marglik (what fit_reward_posterior runs): the same Adam procedure on
    precomputed curvature eigenvalues."""
    la.prior_precision = 1.0
    return clock.once(lambda: optimize_marglik(la))[0]


def subset_loader(x: torch.Tensor, y: torch.Tensor, n: int) -> DataLoader:
    return pair_loader(x[:n], y[:n], shuffle=False)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------- sections
def reference_epoch(model: nn.Module, loader: DataLoader, clock: Clock) -> float:
    """Time of one MAP epoch (AdamW, batch 256) on a copy of ``model``, for paired ratios."""
    net = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)

    def epoch() -> None:
        bradley_terry_epoch(net, loader, opt)

    return clock.once(epoch)[0]


def bench_fit_one_bt(
    model: nn.Module,
    loader: DataLoader,
    warm: DataLoader,
    subset: str,
    structure: str,
    clock: Clock,
    repeats: int,
    *,
    train_loader: DataLoader | None = None,
    marglik: bool = False,
) -> dict[str, Any]:
    """Median fit time; with ``train_loader`` each fit is preceded by a reference MAP epoch
    on it, with ``marglik`` followed by a timed marglik prior optimization."""
    fit_bt(model, warm, subset, structure)  # warm-up (lazy initialisation, allocator)
    fits, epochs, margliks, post = [], [], [], None
    for _ in range(repeats):
        post = None
        gc.collect()
        if train_loader is not None:
            epochs.append(reference_epoch(model, train_loader, clock))
        t, post = clock.once(lambda: fit_bt(model, loader, subset, structure))
        fits.append(t)
        if marglik:
            margliks.append(time_bt_marglik(post.laplace, clock))
    out: dict[str, Any] = {"fit": statistics.median(fits), "post": post}
    if epochs:
        out["epoch"] = statistics.median(epochs)
    if margliks:
        out["marglik"] = statistics.median(margliks)
        out["prior"] = float(post.prior_precision.mean())
    return out


def bench_fit_one_raw(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    n: int,
    subset: str,
    structure: str,
    backend: str,
    clock: Clock,
    cap: float,
    repeats: int = 1,
    probe_rate: float | None = None,
) -> dict[str, Any]:
    """Fit raw laplace-torch on ``n`` pairs unless the probe extrapolates beyond ``cap``."""
    out: dict[str, Any] = {"backend": backend}
    try:
        if probe_rate is None:
            probe_n = min(128, n)
            la = raw_laplace(model, subset, structure, backend)
            out["backend"] = raw_backend_name(la)
            t_probe = clock.once(lambda: la.fit(subset_loader(x, y, probe_n)))[0]
            probe_rate = t_probe / probe_n
        out["rate"] = probe_rate
        est = probe_rate * n
        if est > cap:
            out["skipped"] = f"skipped (est. {fmt_s(est)} > {cap:.0f} s cap)"
            out["est"] = est
            return out
        loader = subset_loader(x, y, n)
        times = []
        for _ in range(repeats):
            la = raw_laplace(model, subset, structure, backend)
            out["backend"] = raw_backend_name(la)
            times.append(clock.once(lambda la=la: la.fit(loader))[0])
        out["fit"] = statistics.median(times)
        out["la"] = la
    except Exception as exc:  # noqa: BLE001 - report laplace-torch failures in the table
        out["error"] = short_error(exc)
    return out


def measure_map(
    cfg: dict[str, Any], x_tr: torch.Tensor, y_tr: torch.Tensor, clock: Clock
) -> tuple[nn.Module, dict[str, Any]]:
    """MAP training and a deep ensemble; returns the first member and the times."""
    log(
        f"MAP training: {cfg['n_main']:,} pairs, {cfg['epochs']} epochs, "
        f"{cfg['ensemble']} ensemble members"
    )
    train_map(BENCH_HIDDEN, x_tr[:1024], y_tr[:1024], 1, clock, seed=99)  # warm-up
    members, member_times = [], []
    for m in range(cfg["ensemble"]):
        model_m, times = train_map(BENCH_HIDDEN, x_tr, y_tr, cfg["epochs"], clock, seed=m)
        members.append(model_m)
        member_times.append(times)
    model = members[0]
    assert n_params(model) == BENCH_PARAMS, n_params(model)
    epoch_t = statistics.median([t for ts in member_times for t in ts])
    map_t = sum(member_times[0])
    ens_t = sum(sum(ts) for ts in member_times)
    out = dict(epoch=epoch_t, train=map_t, ensemble=ens_t, params=n_params(model))
    with torch.no_grad():
        acc = (model(x_tr).argmax(1) == y_tr).float().mean().item()
    out["train_acc"] = acc
    log(
        f"  one epoch {fmt_s(epoch_t)}, training {fmt_s(map_t)}, ensemble {fmt_s(ens_t)}, "
        f"train acc {acc:.3f}"
    )
    return model, out


def measure_fits(
    cfg: dict[str, Any],
    model: nn.Module,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    clock: Clock,
    cap: float,
) -> tuple[dict, dict, dict, dict]:
    """Fit and marglik times of bt_laplace and raw laplace-torch on the main training set;
    returns the times and the fitted posteriors, ``(bt_fit, raw_fit, posts, raw_las)``."""
    loader = subset_loader(x_tr, y_tr, cfg["n_main"])
    warm = subset_loader(x_tr, y_tr, BATCH)
    posts: dict[tuple[str, str], Any] = {}
    bt_fit: dict[tuple[str, str], Any] = {}
    for subset, structure in CONFIGS:
        r = bench_fit_one_bt(
            model,
            loader,
            warm,
            subset,
            structure,
            clock,
            cfg["fit_repeats"],
            train_loader=pair_loader(x_tr, y_tr, shuffle=True),
            marglik=True,
        )
        posts[(subset, structure)] = r.pop("post")
        bt_fit[(subset, structure)] = r
        log(
            f"  bt_laplace {subset}/{structure}: fit {fmt_s(r['fit'])} "
            f"({fmt_x(r['fit'] / r['epoch'])} epoch), marglik {fmt_s(r['marglik'])}"
        )

    raw_fit: dict[tuple[str, str, str], Any] = {}
    raw_las: dict[tuple[str, str, str], Any] = {}
    for subset, structure, backend in RAW_VARIANTS:
        ref = reference_epoch(model, pair_loader(x_tr, y_tr, shuffle=True), clock)
        r = bench_fit_one_raw(
            model, x_tr, y_tr, cfg["n_main"], subset, structure, backend, clock, cap
        )
        r["epoch"] = ref
        if "la" in r:
            la = r.pop("la")
            try:
                r["marglik"] = time_marglik(la, clock)
                raw_las[(subset, structure, backend)] = la
            except Exception as exc:  # noqa: BLE001
                r["marglik_error"] = short_error(exc)
        raw_fit[(subset, structure, backend)] = r
        log(
            f"  laplace-torch {subset}/{structure} [{r.get('backend')}]: "
            f"{fmt_s(r['fit']) if 'fit' in r else r.get('skipped') or r.get('error')}"
        )
    return bt_fit, raw_fit, posts, raw_las


def measure_prediction(
    cfg: dict[str, Any],
    model: nn.Module,
    posts: dict,
    raw_las: dict,
    x_items: torch.Tensor,
    x_pairs: torch.Tensor,
    clock: Clock,
    cap: float,
) -> tuple[dict, dict]:
    """The MAP forward and every posterior's queries per batch size: ``(fwd, pred)``."""
    log("prediction")
    pred: dict[tuple[Any, ...], Any] = {}
    fwd_t: dict[int, float] = {}

    def fwd(xb: torch.Tensor) -> None:
        with torch.no_grad():
            model(xb)

    for b in cfg["pred_batches"]:
        fwd_t[b] = clock.median(lambda xb=x_items[:b]: fwd(xb))
    for (subset, structure), post in posts.items():
        for b in cfg["pred_batches"]:
            xb = x_items[:b]
            # forward and post(x) alternately: the ratio is robust to load from other processes
            t_fwd, t = clock.paired(lambda xb=xb: fwd(xb), lambda xb=xb, post=post: post(xb))
            entry = {"post": t, "fwd": t_fwd}
            if b >= 2:
                pb = x_pairs[: b // 2]
                t_post, t_pref = clock.paired(
                    lambda xb=xb, post=post: post(xb),
                    lambda pb=pb, post=post: post.preference_probability(pb),
                )
                entry["pref"], entry["post_pref"] = t_pref, t_post
            pred[("bt", subset, structure, b)] = entry
        log(
            f"  bt_laplace {subset}/{structure}: "
            + ", ".join(
                f"b={b} {fmt_x(e['post'] / e['fwd'])}"
                for b in cfg["pred_batches"]
                if (e := pred[("bt", subset, structure, b)])
            )
        )
    for key, la in raw_las.items():
        subset, structure, backend = key
        rate_est = None
        for b in cfg["pred_batches"]:
            xb = x_items[:b]
            entry: dict[str, Any] = {}
            if rate_est is not None and rate_est * b * b > cap:
                entry["skipped"] = f"skipped (est. {fmt_s(rate_est * b * b)} > cap)"
                entry["est"] = rate_est * b * b
                pred[("raw", subset, structure, backend, b)] = entry
                continue
            try:
                if b > 64:
                    t = clock.once(lambda xb=xb, la=la: la(xb))[0]
                else:
                    t = clock.median(lambda xb=xb, la=la: la(xb), min_repeats=3, warmup=1)
                entry["post"] = t
                if b > 1:  # time grows with the square of the batch (per-item Jacobians)
                    rate_est = t / (b * b)
            except Exception as exc:  # noqa: BLE001
                entry["error"] = short_error(exc)
                pred[("raw", subset, structure, backend, b)] = entry
                break
            pred[("raw", subset, structure, backend, b)] = entry
        log(f"  laplace-torch {subset}/{structure} [{backend}] done")
    return fwd_t, pred


def measure_pair_scaling(
    cfg: dict[str, Any],
    model: nn.Module,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    clock: Clock,
    cap: float,
) -> dict:
    """Fit time against the number of training pairs."""
    log("scaling with the number of pairs")
    out: dict[tuple[Any, ...], Any] = {}
    warm = subset_loader(x_all, y_all, BATCH)
    rates: dict[tuple[str, str, str], float] = {}
    for n in cfg["pairs_grid"]:
        ld = subset_loader(x_all, y_all, n)
        for subset, structure in CONFIGS:
            r = bench_fit_one_bt(model, ld, warm, subset, structure, clock, 1)
            out[("bt", subset, structure, n)] = r["fit"]
            del r
        for subset, structure, backend in cfg["raw_scaling"]:
            key = (subset, structure, backend)
            r = bench_fit_one_raw(
                model,
                x_all,
                y_all,
                n,
                subset,
                structure,
                backend,
                clock,
                cap,
                probe_rate=rates.get(key),
            )
            if "rate" in r:
                rates[key] = r["rate"]
            r.pop("la", None)
            out[("raw", subset, structure, backend, n)] = r
        gc.collect()
        log(
            f"  {n:,} pairs: "
            + ", ".join(f"{s}/{h} {fmt_s(out[('bt', s, h, n)])}" for s, h in CONFIGS)
        )
    return out


def measure_width_scaling(
    cfg: dict[str, Any],
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    clock: Clock,
    cap: float,
) -> dict:
    """Fit time against the hidden width (a MAP model per width)."""
    loader = subset_loader(x_tr, y_tr, cfg["n_main"])
    log("scaling with the hidden width")
    out: dict[int, Any] = {}
    for h in cfg["hidden_grid"]:
        m_h, times = train_map(h, x_tr, y_tr, cfg["hidden_epochs"], clock, seed=0)
        row: dict[Any, Any] = {"params": n_params(m_h), "epoch": statistics.median(times)}
        warm = subset_loader(x_tr, y_tr, BATCH)
        for subset, structure in CONFIGS:
            r = bench_fit_one_bt(
                m_h,
                loader,
                warm,
                subset,
                structure,
                clock,
                1,
                train_loader=pair_loader(x_tr, y_tr, shuffle=True),
            )
            row[(subset, structure)] = r["fit"]
            row[("epoch", subset, structure)] = r["epoch"]
        for subset, structure, backend in cfg["raw_scaling"]:
            r = bench_fit_one_raw(
                m_h, x_tr, y_tr, cfg["n_main"], subset, structure, backend, clock, cap
            )
            r.pop("la", None)
            row[("raw", subset, structure, backend)] = r
        out[h] = row
        log(f"  hidden {h} ({row['params']:,} params): epoch {fmt_s(row['epoch'])}")
    return out


def run_benchmark(args: argparse.Namespace) -> None:
    cfg = QUICK if args.quick else FULL
    cap = args.cap if args.cap is not None else cfg["cap"]
    device = torch.device(args.device)
    clock = Clock(device)
    t_start = time.perf_counter()
    env = environment(torch.get_num_threads(), args.device)
    res: dict[str, Any] = {"cfg": cfg, "cap": cap}

    n_max = max([cfg["n_main"], *cfg["pairs_grid"]])
    x_all, y_all = make_data(n_max, device, seed=0)
    x_tr, y_tr = x_all[: cfg["n_main"]], y_all[: cfg["n_main"]]
    x_items = torch.randn(4096, D, generator=torch.Generator().manual_seed(1)).to(device)
    x_pairs = torch.randn(2048, 2, D, generator=torch.Generator().manual_seed(2)).to(device)

    model, res["map"] = measure_map(cfg, x_tr, y_tr, clock)
    res["bt_fit"], res["raw_fit"], posts, raw_las = measure_fits(cfg, model, x_tr, y_tr, clock, cap)
    res["fwd"], res["pred"] = measure_prediction(
        cfg, model, posts, raw_las, x_items, x_pairs, clock, cap
    )
    log("peak memory of prediction (one subprocess per point)")
    res["mem"] = run_memory(args, cfg, model, x_tr, y_tr)
    res["scale_pairs"] = measure_pair_scaling(cfg, model, x_all, y_all, clock, cap)
    res["scale_params"] = measure_width_scaling(cfg, x_tr, y_tr, clock, cap)

    res["elapsed"] = time.perf_counter() - t_start
    log(f"done in {res['elapsed']:.0f} s")
    res.update(environment=env, threads=args.threads, plot=Path(args.plot).name)
    res["setup"] = {"d": D, "batch": BATCH, "hidden": BENCH_HIDDEN, "configs": CONFIGS}
    save(page_name(args.out), "speed", res)
    report.write(page_name(args.out))


# ---------------------------------------------------------------------------------- memory
def run_memory(
    args: argparse.Namespace,
    cfg: dict[str, Any],
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.pt"
        n_fit = min(1_000, x.shape[0])
        torch.save(
            {
                "model": {k: v.cpu() for k, v in model.state_dict().items()},
                "x": x[:n_fit].cpu(),
                "y": y[:n_fit].cpu(),
            },
            state,
        )
        jobs = [("bt", s, h, "bt") for s, h in cfg["mem_bt"]]
        jobs += [("raw", s, h, b) for s, h, b in cfg["mem_raw"]]
        cap_bytes = cfg["mem_cap_gib"] * 2**30
        for kind, subset, structure, backend in jobs:
            points: list[tuple[int, float]] = []
            for n in cfg["mem_items"] if kind == "bt" else cfg["mem_items_raw"]:
                key = (kind, subset, structure, backend, n)
                if kind == "raw" and points:
                    # laplace-torch's prediction memory grows with the square of the batch
                    n0, b0 = points[-1]
                    est = b0 * (n / n0) ** 2
                    if est > cap_bytes:
                        out[key] = {
                            "skipped": f"skipped (est. {fmt_b(est)} > "
                            f"{cfg['mem_cap_gib']:.0f} GiB cap)",
                            "est": est,
                        }
                        continue
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--_mem-probe",
                    str(state),
                    "--device",
                    args.device,
                    *(["--threads", str(args.threads)] if args.threads else []),
                    "--_probe-spec",
                    json.dumps([kind, subset, structure, backend, n]),
                ]
                try:
                    proc = subprocess.run(
                        cmd, capture_output=True, text=True, timeout=600, check=False
                    )
                    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                    if proc.returncode != 0 or not line:
                        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                        out[key] = {"error": f"fails: {err[:80]}"}
                        continue
                    r = json.loads(line[-1])
                except subprocess.TimeoutExpired:
                    out[key] = {"error": "timed out"}
                    continue
                out[key] = r
                if "peak" in r:
                    points.append((n, max(r["peak"], 1.0)))
            log(
                f"  {kind} {subset}/{structure} [{backend}]: "
                + ", ".join(
                    f"{n}: {fmt_b(v.get('peak'))}"
                    for n in (cfg["mem_items"] if kind == "bt" else cfg["mem_items_raw"])
                    if (v := out.get((kind, subset, structure, backend, n))) is not None
                )
            )
    return out


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS so that RSS deltas see every new allocation."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _hwm_rss() -> tuple[int, int]:
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                vals[line.split(":")[0]] = int(line.split()[1]) * 1024
    return vals["VmHWM"], vals["VmRSS"]


def mem_probe(args: argparse.Namespace) -> None:
    """Child process: fit one posterior, then measure the peak memory of one prediction."""
    kind, subset, structure, backend, n = json.loads(args._probe_spec)
    device = torch.device(args.device)
    state = torch.load(args._mem_probe)
    model = PairwiseRewardModel(mlp(D, BENCH_HIDDEN))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    loader = pair_loader(state["x"].to(device), state["y"].to(device), shuffle=False)
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(3)).to(device)
    if kind == "bt":
        post = fit_bt(model, loader, subset, structure)
        predict: Callable[[torch.Tensor], Any] = post
    else:
        la = raw_laplace(model, subset, structure, backend)
        la.fit(loader)
        la.prior_precision = 1.0
        predict = la
    predict(x[:8])  # warm-up: caches, lazy initialisation
    gc.collect()
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        predict(x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        how = "cuda max_memory_allocated"
    else:
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            _, base = _hwm_rss()
            predict(x)
            hwm, _ = _hwm_rss()
            peak = hwm - base
            how = "peak RSS (VmHWM after clear_refs)"
        except OSError:
            import resource

            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            predict(x)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
            how = "ru_maxrss delta (lower bound)"
    print(json.dumps({"peak": peak, "time": time.perf_counter() - t0, "how": how}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced grid (~2-3 min on 2 cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", default="docs/results/benchmarks.md", help=OUT_HELP)
    p.add_argument(
        "--plot",
        default=None,
        help="scaling plot (default: docs/results/benchmark_scaling.png next to --out)",
    )
    p.add_argument(
        "--cap",
        type=float,
        default=None,
        help="time cap in s for each raw laplace-torch fit/prediction "
        "(default 60, 10 with --quick)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the run (default: torch's default); 1 gives "
        "steadier ratios on a machine shared with other jobs",
    )
    p.add_argument("--_mem-probe", dest="_mem_probe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_probe-spec", dest="_probe_spec", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._mem_probe:
        mem_probe(args)
        return
    if args.plot is None:
        args.plot = str(Path(args.out).parent / "benchmark_scaling.png")
    torch.manual_seed(0)
    try:
        run_benchmark(args)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
