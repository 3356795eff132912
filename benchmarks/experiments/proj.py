"""Evidence with ||theta*||^2 restricted to the span of the pair Jacobians (raises the prior).

One-off study behind docs/results/prior_sweep.md ("Reading"); not a benchmark page. Run from the
repository root::

    python benchmarks/experiments/proj.py movielens|warriner SEED
"""
# ruff: noqa: E402, E501

import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import realdata as B
from torch.func import functional_call, jvp
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace import evidence as E
from bt_laplace._distributed import Processes

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
d0 = float(post.prior_precision.mean())
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
params = {k: v.detach() for k, v in model.named_parameters()}


def f(ps):
    return functional_call(model, ps, (xtr,))


with torch.no_grad():
    out, tang = jvp(f, (params,), (params,))
m = out[:, 1, 0] - out[:, 0, 0] if out.dim() == 3 else out[:, 1] - out[:, 0]
jt = tang[:, 1, 0] - tang[:, 0, 0] if tang.dim() == 3 else tang[:, 1] - tang[:, 0]
p = torch.sigmoid(m.double())
w = p * (1 - p)
a_theta = (w.sqrt() * jt.double()) * math.sqrt(float(la._H_factor))
c = U.T @ a_theta
theta_sq = float(la.mean.double().square().sum())
xall = torch.cat([split["score_in"], split["score_out"]])
n_in = len(split["score_in"])
print("theta_sq", theta_sq, "evidence prior", d0, E.exact_evidence_prior_precision(e, theta_sq))
for cut in [1e-4, 1e-6, 1e-8, 1e-10]:
    keep = e > cut * e.max()
    tr = float((c[keep] ** 2 / e[keep]).sum())
    d = E.exact_evidence_prior_precision(e, tr)
    la.prior_precision = d
    te = B.prob_metrics(post.preference_probability(xt), yt)
    _, var = post.predictive.item_moments(xall)
    s = var.sqrt().squeeze()
    print(
        f"cut {cut:g} kept {int(keep.sum())} range theta_sq {tr:.3f} -> prior {d:.4f} test nll {te['nll']:.4f} ece {te['ece']:.4f} auroc {B.ood_auroc(s[:n_in], s[n_in:]):.3f}",
        flush=True,
    )
# soft: weighted by shrinkage e/(e+d) at fixed point
d = d0
for _it in range(50):
    tr = float((c**2 / (e + d)).sum())  # = ||A^T (K + d)^-1 A theta||-ish
    dn = E.exact_evidence_prior_precision(e, tr)
    if abs(math.log(dn / d)) < 1e-6:
        break
    d = dn
la.prior_precision = d
te = B.prob_metrics(post.preference_probability(xt), yt)
_, var = post.predictive.item_moments(xall)
s = var.sqrt().squeeze()
print(
    f"soft fixed point prior {d:.4f} theta_sq {tr:.3f} test nll {te['nll']:.4f} ece {te['ece']:.4f} auroc {B.ood_auroc(s[:n_in], s[n_in:]):.3f}"
)
