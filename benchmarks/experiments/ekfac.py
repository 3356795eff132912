"""EK-FAC check: kron's eigenbasis with the exact GGN's diagonal in it, against kron, at several priors.

One-off study behind docs/results/prior_sweep.md ("Reading"); not a benchmark page. Run from the
repository root::

    python benchmarks/experiments/ekfac.py movielens|warriner SEED
"""
# ruff: noqa: E402, E501

import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import realdata as B
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.bradley_terry import probit_preference_probability as probit

B.setup_run()  # float64 and no warnings, as every real-data run
torch.set_num_threads(2)
name, seed = sys.argv[1], int(sys.argv[2])
split = B.make_split(name, seed)
(xtr, ytr, _), (xva, yva, _), (xt, yt, _) = split["train"], split["val"], split["test"]
model = B.train_map(xtr, ytr, seed)
loader = DataLoader(TensorDataset(xtr, ytr), batch_size=512)
post = btl.fit_reward_posterior(model, loader, prior_precision="marglik")  # the exact evidence
d_ev = float(post.prior_precision)
la = post.laplace
net = model.model if hasattr(model, "model") else model
names = [n for n, _ in net.named_parameters()]
shapes = [p.shape for _, p in net.named_parameters()]
theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def reward(flat, x):
    ps, i = {}, 0
    for n, s in zip(names, shapes, strict=False):
        k = math.prod(s)
        ps[n] = flat[i : i + k].view(s)
        i += k
    return functional_call(net, ps, (x[None],)).reshape(())


jac = vmap(jacrev(reward), in_dims=(None, 0))


def items(x):
    return torch.cat([jac(theta, xb) for xb in x.split(500)])


def pairs(x):
    with torch.no_grad():
        m = (net(x[:, 1]) - net(x[:, 0])).reshape(-1)
    return m, items(x[:, 1]) - items(x[:, 0])


mtr, Jtr = pairs(xtr)
mte, Jte = pairs(xt)
xs = torch.cat([split["score_in"], split["score_out"]])
n_in = len(split["score_in"])
Js = items(xs)
w = torch.sigmoid(mtr) * (1 - torch.sigmoid(mtr))


def rotate(J):
    out, i = [], 0
    for s, vecs in zip(shapes, la.H.eigenvectors, strict=False):
        k = math.prod(s)
        Jl = J[:, i : i + k]
        i += k
        if len(vecs) == 2:
            Jl = Jl.reshape(-1, s[0], s[1])
            Jl = vecs[0].T @ Jl @ vecs[1]
        else:
            Jl = Jl @ vecs[0]
        out.append(Jl.reshape(len(J), -1))
    return torch.cat(out, 1)


Rtr, Rte, Rs = rotate(Jtr), rotate(Jte), rotate(Js)
s_ek = (w[:, None] * Rtr.square()).sum(0)
lam = []
for _s, vals in zip(shapes, la.H.eigenvalues, strict=False):
    lam.append((vals[0][:, None] * vals[1][None, :]).reshape(-1) if len(vals) == 2 else vals[0])
lam = torch.cat(lam) * float(la._H_factor)
# sanity: kron variance via my rotation equals post's
la.prior_precision = d_ev
_, v_post = post.predictive.difference_moments(xt)
v_mine = (Rte.square() / (lam + d_ev)).sum(1)
print(
    "kron check max rel err",
    float(((v_mine - v_post.reshape(-1)).abs() / v_post.reshape(-1)).max()),
)
print(f"{name} seed {seed}: evidence prior {d_ev:.3f}")
for d in [0.01, 0.1, 0.3, 1, 3, d_ev, 30]:
    for lbl, ev in (("kron ", lam), ("ekfac", s_ek)):
        v = (Rte.square() / (ev + d)).sum(1)
        te = B.prob_metrics(probit(mte, v), yt)
        vs = (Rs.square() / (ev + d)).sum(1).sqrt()
        au = B.ood_auroc(vs[:n_in], vs[n_in:])
        print(
            f"  prior {d:7.3f} {lbl} test nll {te['nll']:.4f} ece {te['ece']:.4f} auroc {au:.3f}",
            flush=True,
        )
# evidence for ekfac eigenvalues (structure's own evidence): maximize sum log... via exact formula with its eigenvalues
from bt_laplace.evidence import exact_evidence_prior_precision

th = float((la.mean - la.prior_mean).double().square().sum())
for lbl, ev in (("kron", lam), ("ekfac", s_ek)):
    d = exact_evidence_prior_precision(ev, th)
    v = (Rte.square() / (ev + d)).sum(1)
    te = B.prob_metrics(probit(mte, v), yt)
    print(f"own-evidence {lbl}: prior {d:.3f} nll {te['nll']:.4f} ece {te['ece']:.4f}")
