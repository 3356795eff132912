"""Exact Laplace-GP leave-one-out on the training pairs, and the variant with the cavity mean from a fixed training prior.

One-off study behind docs/results/prior_sweep.md ("Reading"); not a benchmark page. Run from the
repository root::

    python benchmarks/experiments/loo2.py movielens|warriner SEED
"""
# ruff: noqa: E402, E501

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import realdata as B
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace import evidence as E
from bt_laplace._distributed import Processes
from bt_laplace.bradley_terry import probit_preference_probability

B.setup_run()  # float64 and no warnings, as every real-data run
torch.set_num_threads(1)
name, seed = sys.argv[1], int(sys.argv[2])
split = B.make_split(name, seed)
(xtr, ytr, _), (xva, yva, _) = split["train"], split["val"]
(xt, yt, pt), (xo, yo, po) = split["test"], split["ood_pairs"]
model = B.train_map(xtr, ytr, seed)
loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
post = btl.fit_reward_posterior(model, loader, prior_precision="marglik")  # the exact evidence
la = post.laplace
pred = post.predictive
print("default prior", float(post.prior_precision.mean()), "P", la.n_params, "N", la.n_data)
t = time.perf_counter()
K = E._pair_kernel(
    E._pair_backend(la),
    loader,
    la,
    int(la.n_data),
    int(la.n_params),
    E.EVIDENCE_MEMORY_LIMIT,
    "",
    Processes(enabled=False),
)
K = K * float(la._H_factor)
e, U = torch.linalg.eigh(K.cpu())
e = e.clamp_min(0)
print("kernel+eigh s", time.perf_counter() - t)
with torch.no_grad():
    r = model(xtr).double()  # (N,2)
m = (r[:, 1] - r[:, 0]).squeeze(-1) if r.dim() == 2 else (r[:, 1] - r[:, 0]).squeeze(-1)
y = ytr.double()
p = torch.sigmoid(m)
w = p * (1 - p)
g = p - y
U2 = U.square()
xall = torch.cat([split["score_in"], split["score_out"]])
n_in = len(split["score_in"])


def nll(pp):
    return float(
        -(y * pp.clamp_min(1e-12).log() + (1 - y) * (1 - pp).clamp_min(1e-12).log()).mean()
    )


for lp in torch.linspace(-3, 2, 11).tolist():
    d = 10**lp
    h = U2 @ (e / (e + d))
    v = h / w
    vloo = v / (1 - h)
    a = nll(probit_preference_probability(m + vloo * g, vloo))  # GP-LOO (mode assumption)
    b = nll(probit_preference_probability(m, vloo))  # variance-only cavity
    c = nll(probit_preference_probability(m, v))  # train-pair predictive
    la.prior_precision = d
    te = B.prob_metrics(post.preference_probability(xt), yt)
    print(
        f"prior {d:8.4f} gp-loo {a:.4f} var-loo {b:.4f} train {c:.4f} | test nll {te['nll']:.4f} ece {te['ece']:.4f} hmax {float(h.max()):.3f} hmean {float(h.mean()):.3f}",
        flush=True,
    )
print("--- mean shift with fixed delta_train, variance at delta")
for dtr in [1e-3, 1e-2, 1e-1, 1.0, float(post.prior_precision.mean()) if False else 8.0]:
    htr = U2 @ (e / (e + dtr))
    vtr = htr / w
    mshift = m + vtr / (1 - htr) * g
    row = []
    for lp in torch.linspace(-3, 2, 11).tolist():
        d = 10**lp
        h = U2 @ (e / (e + d))
        v = h / w
        vloo = v / (1 - h)
        row.append(nll(probit_preference_probability(mshift, vloo)))
    best = 10 ** torch.linspace(-3, 2, 11)[int(torch.tensor(row).argmin())]
    print(f"dtr {dtr:g}: " + " ".join(f"{r:.3f}" for r in row), "argmin", float(best), flush=True)
