"""How the prior precision sets calibration and OOD detection on real ratings; which rule finds it.

Run from the repository root::

    python benchmarks/bench_prior_sweep.py [--seeds 3] [--datasets movielens,warriner]

Saves ``docs/data/prior_sweep.json`` and writes ``docs/results/prior_sweep.md`` and
``docs/results/prior_sweep.png`` from it (``benchmarks/report.py``). Data, splits, model and MAP
training are those of ``bench_real_data.py``, from ``realdata.py`` (MovieLens with family films
held out, Warriner valence norms with adjectives held out; a 2-hidden-layer tanh MLP, 30 epochs
of AdamW). For each seed three posteriors over all weights of the same MAP model are evaluated
at every prior precision of a grid (test NLL, ECE, OOD AUROC of the reward std, validation NLL):

- ``kron``, the default (``fit_reward_posterior(model, loader)``),
- ``diag`` (``hessian_structure="diag"``),
- ``exact``: the exact Laplace posterior (covariance ``(H + delta I)^-1`` with the exact
  Bradley-Terry GGN, no structure), through its ``N x N`` pair kernel (:class:`ExactLaplace`),

and the page places the prior each rule picks on those curves:

- *exact evidence*: the default without validation pairs (the same prior for every structure:
  the evidence of the exact GGN),
- *gridsearch on validation pairs* (kron: ``prior_precision="gridsearch", val_loader=...``,
  what the default does when given a ``val_loader``; the others: the grid point with the least
  validation NLL),
- *exact leave-one-out* on the training pairs (kron; tried, not offered): Laplace-GP
  leave-one-out (Rasmussen and Williams 2006, sec. 3.4.2 / 5.4.2) computed exactly from the
  eigenvectors of the pair kernel ``K = W^1/2 dJ dJ^T W^1/2`` that the exact evidence builds
  anyway: the leverage ``h_i = [K (K + delta)^-1]_ii``, the cavity variance
  ``v_i / (1 - h_i)`` and the cavity mean ``m_i + v_i (p_i - y_i) / (1 - h_i)``,
- the *least test NLL* on the grid: not available to a user, the bound on any rule.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from typing import Any

import realdata as rd
import report
import torch
from _common import OUT_HELP, environment, page_name, save
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace import evidence
from bt_laplace._distributed import Processes
from bt_laplace.bradley_terry import probit_preference_probability

rd.setup_run()  # float64 (and no warnings), as the real-data benchmark
warnings.filterwarnings("ignore")
GRID = [10.0**e for e in torch.linspace(-3, 2, 21).tolist()]


def exact_loo_nll(post: btl.RewardPosterior, model, loader, x, y, grid: list[float]) -> list[float]:
    """Laplace-GP leave-one-out NLL of the training pairs at each prior of ``grid`` (exact GGN)."""
    la = post.laplace
    kernel = evidence._pair_kernel(
        evidence._pair_backend(la), loader, la, int(la.n_data), int(la.n_params),
        evidence.EVIDENCE_MEMORY_LIMIT, "", Processes(enabled=False),
    )  # fmt: skip
    eig, vec = torch.linalg.eigh(kernel * float(la._H_factor))
    eig, vec2 = eig.clamp_min(0), vec.square()
    with torch.no_grad():
        r = model(x).reshape(len(x), 2)
    m = (r[:, 1] - r[:, 0]).double()
    p = torch.sigmoid(m)
    w, g, yd = p * (1 - p), p - y.double(), y.double()
    out = []
    for delta in grid:
        h = (vec2 @ (eig / (eig + delta))).clamp(max=1 - 1e-12)
        v_loo = h / w / (1 - h)
        q = probit_preference_probability(m + v_loo * g, v_loo).clamp(1e-12, 1 - 1e-12)
        out.append(float(-(yd * q.log() + (1 - yd) * (1 - q).log()).mean()))
    return out


def at_prior(post: btl.RewardPosterior, delta: float, split: dict[str, Any]) -> dict[str, float]:
    """Test NLL/ECE, validation NLL and OOD AUROC of ``post`` with prior precision ``delta``."""
    post.laplace.prior_precision = delta
    (xva, yva, _), (xt, yt, _) = split["val"], split["test"]
    test = rd.prob_metrics(post.preference_probability(xt), yt)
    val = rd.prob_metrics(post.preference_probability(xva), yva)
    xall = torch.cat([split["score_in"], split["score_out"]])
    n_in = len(split["score_in"])
    std = post(xall).variance.reshape(-1).clamp_min(0).sqrt()
    return {
        "test_nll": test["nll"],
        "test_ece": test["ece"],
        "val_nll": val["nll"],
        "auroc": rd.ood_auroc(std[:n_in], std[n_in:]),
    }


class ExactLaplace:
    """The exact Laplace posterior of all weights (MAP mean, covariance ``(H + delta I)^-1`` with
    the exact Bradley-Terry GGN ``H = dJ^T W dJ``) in its pair-kernel form, from explicit
    Jacobians (``torch.func``): for a query Jacobian ``j``, ``var = |j|^2 / delta -
    |L^-1 W^1/2 dJ j|^2 / delta^2`` with ``L L^T = I + W^1/2 dJ dJ^T W^1/2 / delta``
    (Woodbury). Exact to rounding; its cost (``N x P`` Jacobians, an ``N x N`` Cholesky per
    prior, ``O(N^2)`` per query) is why it is a reference here, not a structure."""

    def __init__(self, model, split: dict[str, Any]) -> None:
        net = model.model if hasattr(model, "model") else model
        names = [n for n, _ in net.named_parameters()]
        shapes = [p.shape for _, p in net.named_parameters()]
        theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

        def reward(flat, x):
            ps, i = {}, 0
            for n, shape in zip(names, shapes, strict=True):
                k = math.prod(shape)
                ps[n] = flat[i : i + k].view(shape)
                i += k
            return functional_call(net, ps, (x[None],)).reshape(())

        jac = vmap(jacrev(reward), in_dims=(None, 0))

        def items(x):
            return torch.cat([jac(theta, xb) for xb in x.split(500)])

        def pairs(x):
            with torch.no_grad():
                m = (net(x[:, 1]) - net(x[:, 0])).reshape(-1)
            return m, items(x[:, 1]) - items(x[:, 0])

        (xtr, _, _), (xva, yva, _), (xt, yt, _) = split["train"], split["val"], split["test"]
        m, jtr = pairs(xtr)
        p = torch.sigmoid(m)
        self.root = (p * (1 - p)).sqrt()
        self.kernel = jtr @ jtr.T
        self.val, self.test = pairs(xva), pairs(xt)
        self.yva, self.yt = yva, yt
        xall = torch.cat([split["score_in"], split["score_out"]])
        self.n_in = len(split["score_in"])
        js = items(xall)
        self.cross = {
            "val": self.val[1] @ jtr.T,
            "test": self.test[1] @ jtr.T,
            "score": js @ jtr.T,
        }
        self.sq = {
            "val": self.val[1].square().sum(1),
            "test": self.test[1].square().sum(1),
            "score": js.square().sum(1),
        }

    def _var(self, chol: torch.Tensor, what: str, delta: float) -> torch.Tensor:
        v = torch.linalg.solve_triangular(
            chol, self.root[:, None] * self.cross[what].T, upper=False
        )
        return (self.sq[what] / delta - v.square().sum(0) / delta**2).clamp_min(0)

    def variances(self, delta: float) -> dict[str, torch.Tensor]:
        """Margin variances of the validation and test pairs and reward variances of the
        scored items under the exact posterior with prior precision ``delta``."""
        eye = torch.eye(len(self.root), dtype=self.kernel.dtype)
        chol = torch.linalg.cholesky(eye + self.root[:, None] * self.kernel * self.root / delta)
        return {what: self._var(chol, what, delta) for what in ("val", "test", "score")}

    def at_prior(self, delta: float) -> dict[str, float]:
        var = self.variances(delta)
        test = rd.prob_metrics(probit_preference_probability(self.test[0], var["test"]), self.yt)
        val = rd.prob_metrics(probit_preference_probability(self.val[0], var["val"]), self.yva)
        std = var["score"].sqrt()
        return {
            "test_nll": test["nll"],
            "test_ece": test["ece"],
            "val_nll": val["nll"],
            "auroc": rd.ood_auroc(std[: self.n_in], std[self.n_in :]),
        }


def _argmin(curve: list[dict[str, float]], key: str) -> int:
    return min(range(len(curve)), key=lambda i: curve[i][key])


def run_seed(name: str, seed: int) -> dict[str, Any]:
    split = rd.make_split(name, seed)
    (xtr, ytr, _), (xva, yva, _) = split["train"], split["val"]
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
    val_loader = DataLoader(TensorDataset(xva, yva), batch_size=512)
    model = rd.train_map(xtr, ytr, seed)
    t = time.perf_counter()
    post = btl.fit_reward_posterior(model, loader, prior_precision="marglik")
    t_evidence = time.perf_counter() - t
    delta_ev = float(post.prior_precision)
    t = time.perf_counter()
    default = btl.fit_reward_posterior(model, loader)
    t_default = time.perf_counter() - t
    diag_default = btl.fit_reward_posterior(model, loader, hessian_structure="diag")
    t = time.perf_counter()
    grid_post = btl.fit_reward_posterior(
        model, loader, prior_precision="gridsearch", val_loader=val_loader
    )
    t_grid = time.perf_counter() - t
    delta_val = float(grid_post.prior_precision)
    t = time.perf_counter()
    loo = exact_loo_nll(post, model, loader, xtr, ytr, GRID)
    t_loo = time.perf_counter() - t
    delta_loo = GRID[min(range(len(GRID)), key=loo.__getitem__)]
    diag = btl.fit_reward_posterior(
        model, loader, hessian_structure="diag", prior_precision="marglik"
    )
    exact = ExactLaplace(model, split)
    posts = {"kron": post, "diag": diag}
    curves = {k: [at_prior(p, d, split) for d in GRID] for k, p in posts.items()}
    curves["exact"] = [exact.at_prior(d) for d in GRID]
    picks: dict[str, dict[str, Any]] = {}
    for key, curve in curves.items():
        rules = {
            "exact evidence": delta_ev,
            "least validation NLL (grid)": GRID[_argmin(curve, "val_nll")],
            "least test NLL (grid)": GRID[_argmin(curve, "test_nll")],
        }
        if key == "diag":
            rules["default: evidence, calibrated on held-out items"] = float(
                diag_default.prior_precision
            )
        if key == "kron":
            rules = {
                "exact evidence": delta_ev,
                "default: evidence, calibrated on held-out items": float(default.prior_precision),
                "gridsearch on validation pairs": delta_val,
                "exact leave-one-out (train pairs)": delta_loo,
                "least test NLL (grid)": rules["least test NLL (grid)"],
            }
        at = exact.at_prior if key == "exact" else (lambda d, p=posts[key]: at_prior(p, d, split))
        picks[key] = {rule: {"prior": d, **at(d)} for rule, d in rules.items()}
    return {
        "grid": GRID,
        "curves": curves,
        "loo_nll": loo,
        "picks": picks,
        "fit_s": {
            "exact evidence": t_evidence,
            "default: evidence, calibrated on held-out items": t_default,
            "gridsearch on validation pairs": t_grid,
            "exact leave-one-out (train pairs)": t_evidence + t_loo,
        },
        "n_params": int(post.laplace.n_params),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default="movielens,warriner")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/results/prior_sweep.md", help=OUT_HELP)
    args = parser.parse_args()
    name = page_name(args.out)
    torch.set_num_threads(args.threads)
    env = environment(threads=args.threads)
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {}
    for data in args.datasets.split(","):
        runs[data] = []
        for seed in range(args.seeds):
            ts = time.perf_counter()
            runs[data].append(run_seed(data, seed))
            for key, picks in runs[data][-1]["picks"].items():
                print(
                    f"{data} seed {seed} ({time.perf_counter() - ts:.0f} s) {key}: "
                    + "; ".join(
                        f"{k} {v['prior']:.3g} (nll {v['test_nll']:.3f} ece {v['test_ece']:.3f})"
                        for k, v in picks.items()
                    ),
                    flush=True,
                )
    results = {
        "environment": env,
        "elapsed": time.perf_counter() - t0,
        "seeds": args.seeds,
        "runs": runs,
        "setup": {
            "train_pairs": rd.N_TRAIN,
            "val_pairs": rd.N_VAL,
            "test_pairs": rd.N_TEST,
            "epochs": rd.EPOCHS,
            "hidden": rd.HIDDEN,
            "log10_grid": [round(math.log10(d), 3) for d in GRID],
        },
    }
    save(name, "prior_sweep", results)
    report.write(name)


if __name__ == "__main__":
    main()
