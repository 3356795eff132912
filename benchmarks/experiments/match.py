"""Kron's margin variance on *training* pairs against the exact posterior's, over a grid of priors.

One-off study behind docs/results/prior_sweep.md ("Reading"); not a benchmark page. Run from the
repository root::

    python benchmarks/experiments/match.py movielens|warriner SEED
"""
# ruff: noqa: E402, E501

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import realdata as B
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace import evidence as E
from bt_laplace._distributed import Processes

B.setup_run()  # float64 and no warnings, as every real-data run
torch.set_num_threads(1)
name, seed = sys.argv[1], int(sys.argv[2])
structure = sys.argv[3] if len(sys.argv) > 3 else "kron"
split = B.make_split(name, seed)
(xtr, ytr, _), (xva, yva, _) = split["train"], split["val"]
(xt, yt, pt) = split["test"]
model = B.train_map(xtr, ytr, seed)
loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
post = btl.fit_reward_posterior(model, loader, hessian_structure=structure, evidence="exact")
la = post.laplace
pred = post.predictive
d_ev = float(post.prior_precision)
K = E._pair_kernel(
    E._pair_backend(la),
    loader,
    la,
    int(la.n_data),
    int(la.n_params),
    E.EVIDENCE_MEMORY_LIMIT,
    "",
    Processes(enabled=False),
) * float(la._H_factor)
e, U = torch.linalg.eigh(K.cpu())
e = e.clamp_min(0)
U2 = U.square()
with torch.no_grad():
    r = model(xtr).reshape(len(xtr), 2)
m = (r[:, 1] - r[:, 0]).double()
p = torch.sigmoid(m)
w = p * (1 - p)
v_exact = (U2 @ (e / (e + d_ev))) / w / float(la._H_factor)  # margin variance of exact posterior
# careful: H_factor tempering: posterior precision = H_factor*GGN + delta; K already scaled
v_exact = (U2 @ (e / (e + d_ev))) / (w * float(la._H_factor))
print(f"{name} seed {seed} {structure}: evidence prior {d_ev:.3f}")
xall = torch.cat([split["score_in"], split["score_out"]])
n_in = len(split["score_in"])


def at(d):
    la.prior_precision = d
    _, v = pred.difference_moments(xtr)
    te = B.prob_metrics(post.preference_probability(xt), yt)
    _, var = pred.item_moments(xall)
    s = var.reshape(-1).sqrt()
    return v.double(), te, B.ood_auroc(s[:n_in], s[n_in:])


target = v_exact.log().mean()
for lp in torch.linspace(-3, 2, 21).tolist():
    d = 10**lp
    v, te, au = at(d)
    print(
        f"  prior {d:8.4f} logmean ratio struct/exact {float(v.log().mean() - target):+.3f} mean ratio {float(v.mean() / v_exact.mean()):.3f} | test nll {te['nll']:.4f} ece {te['ece']:.4f} auroc {au:.3f}",
        flush=True,
    )
