"""Calibration of preference probabilities on real data: MAP vs laplace-torch vs bt_laplace.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_calibration.py [--quick]

Saves ``docs/data/calibration.json`` and writes ``docs/results/calibration.md`` and the reliability
diagram ``docs/results/calibration.png`` from it (``benchmarks/report.py``).

Data: scikit-learn's bundled diabetes regression data (442 patients, 10 features; shipped
with scikit-learn, nothing is downloaded). Rows are split into train/val/test *before* pairs
are formed, so every test pair compares two patients never seen in training. A pair
``(i, j)`` is labelled ``y = 1`` ("j has the larger disease progression") with
Bradley-Terry noise on the standardized target: ``y ~ Bernoulli(sigmoid(BETA (z_j - z_i)))``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import report
import torch
from _common import OUT_HELP, RESULTS, environment, page_name, save
from laplace import Laplace
from sklearn.datasets import load_diabetes
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace.fit import fit_reward_posterior
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.testing import bradley_terry_epoch, mlp

warnings.filterwarnings("ignore")
THREADS = 2
torch.set_num_threads(THREADS)
torch.set_default_dtype(torch.float64)

BETA = 3.0  # Bradley-Terry sharpness on the standardized target
HIDDEN = 32
EPOCHS = 30
N_TRAIN, N_VAL, N_TEST = 4000, 1000, 2000  # pairs
N_BINS = 15


# ---------------------------------------------------------------------------- data
def make_split(seed: int):
    data = load_diabetes()
    x_all = torch.as_tensor(data.data, dtype=torch.float64)
    t_all = torch.as_tensor(data.target, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x_all), generator=g)
    n_tr, n_va = int(0.6 * len(perm)), int(0.2 * len(perm))
    rows = {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}
    tr = rows["train"]
    mu, sd = x_all[tr].mean(0), x_all[tr].std(0)
    tmu, tsd = t_all[tr].mean(), t_all[tr].std()
    x_std, z = (x_all - mu) / sd, (t_all - tmu) / tsd

    def pairs(idx: torch.Tensor, n: int):
        i = idx[torch.randint(len(idx), (n,), generator=g)]
        j = idx[torch.randint(len(idx), (n,), generator=g)]
        keep = i != j
        i, j = i[keep], j[keep]
        p_true = torch.sigmoid(BETA * (z[j] - z[i]))
        y = torch.bernoulli(p_true, generator=g).long()
        return torch.stack([x_std[i], x_std[j]], 1), y, p_true

    return (
        pairs(rows["train"], N_TRAIN),
        pairs(rows["val"], N_VAL),
        pairs(rows["test"], N_TEST),
        {k: len(v) for k, v in rows.items()},
    )


def train_map(x, y, x_val, y_val, seed: int):
    """AdamW for up to EPOCHS epochs; keeps the epoch with the best validation NLL."""
    torch.manual_seed(seed + 100)
    d = x.shape[-1]
    model = PairwiseRewardModel(mlp(d, HIDDEN))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    best, best_state, best_epoch = float("inf"), None, 0
    for epoch in range(EPOCHS):
        model.train()
        bradley_terry_epoch(model, loader, opt)
        model.eval()
        with torch.no_grad():
            val = float(nn.functional.cross_entropy(model(x_val), y_val))
        if val < best:
            best, best_epoch = val, epoch + 1
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), best_epoch


# ---------------------------------------------------------------------------- metrics
def metrics(p: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    yf = y.double()
    pc = p.clamp(1e-12, 1 - 1e-12)
    conf = torch.maximum(p, 1 - p)
    correct = ((p > 0.5).long() == y).double()
    ece = 0.0
    edges = torch.linspace(0, 1, N_BINS + 1)
    for k in range(N_BINS):
        m = (conf > edges[k]) & (conf <= edges[k + 1]) if k else (conf <= edges[1])
        if m.any():
            ece += float(m.double().mean()) * abs(float(correct[m].mean() - conf[m].mean()))
    return {
        "acc": float(correct.mean()),
        "nll": float(-(yf * pc.log() + (1 - yf) * (1 - pc).log()).mean()),
        "brier": float((p - yf).square().mean()),
        "ece": ece,
    }


def reliability(p: torch.Tensor, y: torch.Tensor):
    conf = torch.maximum(p, 1 - p)
    correct = ((p > 0.5).long() == y).double()
    edges = torch.linspace(0, 1, N_BINS + 1)
    xs, ys, ns = [], [], []
    for k in range(N_BINS):
        m = (conf > edges[k]) & (conf <= edges[k + 1])
        if int(m.sum()) >= 10:
            xs.append(float(conf[m].mean()))
            ys.append(float(correct[m].mean()))
            ns.append(int(m.sum()))
    return xs, ys, ns


# ---------------------------------------------------------------------------- methods
def lt_probit(la, x: torch.Tensor) -> torch.Tensor:
    """laplace-torch's own pair probability (batched: its predictive forms Jacobians)."""
    return torch.cat(
        [la(xb, fitting=True, link_approx="probit")[:, 1].detach() for xb in x.split(250)]
    )


def run_methods(model, train_loader, x_test, quick: bool):
    """Return {method: (probabilities, prior precision, seconds)}."""
    res = {}
    with torch.no_grad():
        logits = model(x_test)
    res["MAP"] = (torch.sigmoid(logits[:, 1] - logits[:, 0]), float("nan"), 0.0)
    lt_specs = [
        ("laplace-torch all/diag (CurvlinopsGGN)", "diag", None),
        ("laplace-torch all/kron (CurvlinopsGGN)", "kron", None),
    ]
    if quick:
        lt_specs = lt_specs[1:]
    for name, structure, backend in lt_specs:
        t = time.perf_counter()
        kwargs = {} if backend is None else {"backend": backend}
        la = Laplace(
            model, "reward_modeling", subset_of_weights="all", hessian_structure=structure, **kwargs
        )
        la.fit(train_loader)
        la.optimize_prior_precision(method="marglik")
        p = lt_probit(la, x_test)
        res[name] = (p, float(la.prior_precision), time.perf_counter() - t)
    bt_specs = [
        ("all", "diag", "posterior"),
        ("all", "kron", "posterior"),
        ("last_layer", "kron", "posterior"),
        ("all", "full", "posterior"),
        ("all", "diag", "exact"),
        ("all", "kron", "exact"),
    ]
    for subset, structure, evidence in bt_specs:
        t = time.perf_counter()
        post = fit_reward_posterior(
            model,
            train_loader,
            subset_of_weights=subset,
            hessian_structure=structure,
            prior_precision="marglik",
            evidence=evidence,
        )
        p = post.preference_probability(x_test)
        tag = "" if evidence == "posterior" else ", evidence='exact'"
        res[f"bt_laplace {subset}/{structure}{tag}"] = (
            p,
            float(post.prior_precision.reshape(-1)[0]),
            time.perf_counter() - t,
        )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, no laplace-torch diag")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS / "calibration.md"), help=OUT_HELP)
    args = ap.parse_args()
    n_seeds = args.seeds or (2 if args.quick else 5)
    env = environment(THREADS)
    t0 = time.perf_counter()
    table: dict[str, list[dict[str, float]]] = {}
    priors: dict[str, list[float]] = {}
    secs: dict[str, list[float]] = {}
    curves = {}
    sizes = None
    epochs: list[int] = []
    for seed in range(n_seeds):
        (xtr, ytr, _), (xva, yva, _), (xte, yte, pte), sizes = make_split(seed)
        model, epoch = train_map(xtr, ytr, xva, yva, seed)
        epochs.append(epoch)
        loader = DataLoader(TensorDataset(xtr, ytr), batch_size=256)
        res = run_methods(model, loader, xte, args.quick)
        res = {"oracle (true BT probability)": (pte, float("nan"), 0.0), **res}
        for name, (p, prior, sec) in res.items():
            table.setdefault(name, []).append(metrics(p, yte))
            priors.setdefault(name, []).append(prior)
            secs.setdefault(name, []).append(sec)
            if seed == 0:
                curves[name] = reliability(p, yte)
        print(
            f"seed {seed}: "
            + ", ".join(
                f"{k}: ece {table[k][-1]['ece']:.4f} nll {table[k][-1]['nll']:.4f}" for k in res
            ),
            flush=True,
        )

    results = {
        "environment": env,
        "elapsed": time.perf_counter() - t0,
        "quick": args.quick,
        "seeds": n_seeds,
        "setup": {
            "beta": BETA,
            "hidden": HIDDEN,
            "epochs": EPOCHS,
            "pairs": {"train": N_TRAIN, "val": N_VAL, "test": N_TEST},
            "bins": N_BINS,
            "patients": sizes,
        },
        "epochs_chosen": epochs,
        "metrics": table,
        "prior": priors,
        "seconds": secs,
        "reliability_seed0": curves,
    }
    name = page_name(args.out)
    save(name, "calibration", results)
    report.write(name)


if __name__ == "__main__":
    main()
