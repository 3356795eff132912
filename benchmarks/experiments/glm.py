"""Refined mean: the linearized model's own MAP at each prior (Laplace-GP Newton in the pair kernel).

One-off study behind docs/results/prior_sweep.md ("Reading"); not a benchmark page. Run from the
repository root::

    python benchmarks/experiments/glm.py movielens|warriner SEED
"""
# ruff: noqa: E402, E501

import math
import os
import sys
import time

import torch

# GLM-refined linearized Laplace in function space (exact), vs default MAP-mean posterior
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import realdata as B
from torch.func import functional_call, jacrev, vmap

B.setup_run()  # float64 and no warnings, as every real-data run
torch.set_num_threads(2)
name, seed = sys.argv[1], int(sys.argv[2])
split = B.make_split(name, seed)
(xtr, ytr, _), (xva, yva, _) = split["train"], split["val"]
(xt, yt, _) = split["test"]
model = B.train_map(xtr, ytr, seed)
net = model.model if hasattr(model, "model") else model
names = [n for n, _ in net.named_parameters()]
shapes = [p.shape for _, p in net.named_parameters()]
theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def f1(flat, x):
    ps, i = {}, 0
    for n, s in zip(names, shapes, strict=False):
        k = math.prod(s)
        ps[n] = flat[i : i + k].view(s)
        i += k
    return functional_call(net, ps, (x[None],)).reshape(())


jac = vmap(jacrev(f1), in_dims=(None, 0))


def items_J(x):
    return torch.cat([jac(theta, xb) for xb in x.split(500)])


def pair_J(xp):
    return items_J(xp[:, 1]) - items_J(xp[:, 0])


with torch.no_grad():
    mtr = (net(xtr[:, 1]) - net(xtr[:, 0])).reshape(-1)
    mte = (net(xt[:, 1]) - net(xt[:, 0])).reshape(-1)
    mva = (net(xva[:, 1]) - net(xva[:, 0])).reshape(-1)
t = time.perf_counter()
Jtr = pair_J(xtr)
Jte = pair_J(xt)
Jva = pair_J(xva)
xs = torch.cat([split["score_in"], split["score_out"]])
n_in = len(split["score_in"])
Js = items_J(xs)
with torch.no_grad():
    ms = net(xs).reshape(-1)
print("jacobians", time.perf_counter() - t, Jtr.shape, flush=True)
K0 = Jtr @ Jtr.T
Kte = Jte @ Jtr.T
kte = Jte.square().sum(1)
Kva = Jva @ Jtr.T
kva = Jva.square().sum(1)
Ks = Js @ Jtr.T
ks = Js.square().sum(1)
btr = mtr - Jtr @ theta
bte = mte - Jte @ theta
bva = mva - Jva @ theta
y = ytr.double()
from bt_laplace.bradley_terry import probit_preference_probability as probit


def metr(p, yy):
    return B.prob_metrics(p, yy)


def psi(ft, K, a):
    f = btr + ft
    return 0.5 * float(a @ ft) + float(torch.nn.functional.softplus(-(2 * y - 1) * f).sum())


def glm(delta, iters=40):
    K = K0 / delta
    # start at the prior mean offset (f - b = 0): a = 0
    ft = torch.zeros_like(y)
    a = torch.zeros_like(y)
    obj_old = psi(ft, K, a)
    for _it in range(iters):
        f = btr + ft
        pi = torch.sigmoid(f)
        W = pi * (1 - pi)
        s = W.sqrt()
        dl = y - pi
        Bm = torch.eye(len(y), dtype=K.dtype) + s[:, None] * K * s[None, :]
        L = torch.linalg.cholesky(Bm)
        bb = W * ft + dl
        a_new = bb - s * torch.cholesky_solve((s * (K @ bb))[:, None], L).squeeze(1)
        step = 1.0
        while True:
            a_try = a + step * (a_new - a)
            ft_try = K @ a_try
            o = psi(ft_try, K, a_try)
            if o <= obj_old or step < 1e-4:
                break
            step /= 2
        a, ft = a_try, ft_try
        if abs(obj_old - o) < 1e-10 * abs(o):
            obj_old = o
            break
        obj_old = o
    obj = -obj_old
    f = btr + ft
    pi = torch.sigmoid(f)
    W = pi * (1 - pi)
    s = W.sqrt()
    dl = y - pi
    Bm = torch.eye(len(y), dtype=K.dtype) + s[:, None] * K * s[None, :]
    L = torch.linalg.cholesky(Bm)
    logev = obj - float(torch.log(torch.diagonal(L)).sum())

    def pred(Kx, kx, bx):
        Kx = Kx / delta
        mean = bx + Kx @ dl
        v = torch.linalg.solve_triangular(L, (s[:, None] * Kx.T), upper=False)
        var = kx / delta - v.square().sum(0)
        return mean, var.clamp_min(1e-12)

    return logev, pred, f


def default_like(delta):
    # MAP mean, exact full-GGN covariance at MAP (the bt all/full posterior)
    pi = torch.sigmoid(mtr)
    s = (pi * (1 - pi)).sqrt()
    K = K0 / delta
    L = torch.linalg.cholesky(torch.eye(len(y), dtype=K.dtype) + s[:, None] * K * s[None, :])

    def pred(Kx, kx, mx):
        v = torch.linalg.solve_triangular(L, (s[:, None] * (Kx / delta).T), upper=False)
        return mx, (kx / delta - v.square().sum(0)).clamp_min(1e-12)

    return pred


for lp in [-2, -1, -0.5, 0, 0.5, 1, 2]:
    d = 10**lp
    logev, pred, f = glm(d)
    m, v = pred(Kte, kte, bte)
    te = metr(probit(m, v), yt)
    mv, vv = pred(Kva, kva, bva)
    va = metr(probit(mv, vv), yva)
    _, vs = pred(Ks, ks, ms - Js @ theta)
    au = B.ood_auroc(vs[:n_in].sqrt(), vs[n_in:].sqrt())
    dp = default_like(d)
    m2, v2 = dp(Kte, kte, mte)
    te2 = metr(probit(m2, v2), yt)
    _, vs2 = dp(Ks, ks, ms)
    au2 = B.ood_auroc(vs2[:n_in].sqrt(), vs2[n_in:].sqrt())
    trn = metr(torch.sigmoid(f), ytr)["nll"]
    print(
        f"delta {d:8.4f} GLM logev {logev:10.2f} train {trn:.3f} val {va['nll']:.4f} test nll {te['nll']:.4f} ece {te['ece']:.4f} acc {te['acc']:.3f} auroc {au:.3f} | MAP-mean full: nll {te2['nll']:.4f} ece {te2['ece']:.4f} auroc {au2:.3f}",
        flush=True,
    )
