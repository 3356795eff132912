"""Each posterior structure behind one interface: its covariances from layer I/O agree with
laplace-torch's Jacobian route (the fallback every structure shares) and with jacrev Jacobians
in float64; the structure is found from the laplace-torch class; its state names its tensors."""

from __future__ import annotations

import pytest
import torch
from conftest import fit_bt

from bt_laplace._layer_io import LayerIO, backend_jacobians
from bt_laplace.structures import (
    STRUCTURES,
    DenseJacobians,
    DiagStructure,
    FullStructure,
    KronStructure,
    structure_for,
)
from bt_laplace.testing import item_jacobians

CASES = [(s, h) for s in ("all", "last_layer") for h in ("diag", "kron", "full")]


def _routes(la, structure, x):
    """Layer I/O and dense (laplace-torch) Jacobians of the same items."""
    res = structure.recorder.run(lambda: la.model(x))
    jac, f = backend_jacobians(la.backend, x, last_layer=structure.last_layer)
    return res, DenseJacobians(f[:, 0], jac[:, 0])


@pytest.mark.parametrize(("subset", "hessian"), CASES, ids=[f"{s}-{h}" for s, h in CASES])
def test_layer_io_route_equals_laplace_torch_route(
    reward_model, pairs, pair_loader, subset, hessian
):
    la = fit_bt(reward_model, pair_loader, subset, hessian, prior_precision=0.7)
    structure = structure_for(la)
    assert type(structure) is STRUCTURES[hessian]
    x = pairs[0][:9, 0]
    y = pairs[0][9:18, 1]
    io_x, dense_x = _routes(la, structure, x)
    io_y, dense_y = _routes(la, structure, y)
    assert isinstance(io_x, LayerIO)
    fast = structure.crosses([io_x, io_y], [(0, 0), (1, 1), (0, 1)])
    slow = structure.crosses([dense_x, dense_y], [(0, 0), (1, 1), (0, 1)])
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    fast_cross, fast_quad = structure.dense_cross(io_x, structure.mean_jacobian([io_y]))
    slow_cross, slow_quad = structure.dense_cross(dense_x, structure.mean_jacobian([dense_y]))
    torch.testing.assert_close(fast_cross, slow_cross, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast_quad, slow_quad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hessian", ["diag", "kron", "full"])
def test_all_weights_cross_is_jacrev_quadratic_form(reward_model, pairs, pair_loader, hessian):
    """J Sigma J'^T with brute-force Jacobians and Sigma from laplace-torch, float64: the
    covariances of two batches, and the variances alone (their own route: the rotated sides
    squared in place)."""
    la = fit_bt(reward_model, pair_loader, "all", hessian, prior_precision=0.7)
    structure = structure_for(la)
    x, y = pairs[0][:9, 0], pairs[0][9:18, 1]
    jx, jy = item_jacobians(reward_model, x), item_jacobians(reward_model, y)
    if hessian == "diag":
        sigma = torch.diag(la.posterior_variance)
    elif hessian == "full":
        sigma = la.posterior_covariance
    else:  # kron: the dense inverse of its Kronecker-factored precision
        sigma = torch.linalg.inv(la.posterior_precision.to_matrix())
    io_x, io_y = (structure.recorder.run(lambda z=z: la.model(z)) for z in (x, y))
    (cross,) = structure.crosses([io_x, io_y], [(0, 1)])
    torch.testing.assert_close(cross, ((jx @ sigma) * jy).sum(-1), rtol=1e-10, atol=1e-12)
    var_x, var_y = structure.crosses([io_x, io_y], [(0, 0), (1, 1)])
    torch.testing.assert_close(var_x, ((jx @ sigma) * jx).sum(-1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var_y, ((jy @ sigma) * jy).sum(-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("subset", "hessian"), CASES, ids=[f"{s}-{h}" for s, h in CASES])
def test_variances_alone_leave_the_layer_io_as_it_was(
    reward_model, pairs, pair_loader, subset, hessian
):
    """Variances alone square the rotated sides in place, in buffers reused from one parameter
    tensor to the next: they equal the variances computed beside a covariance (no squares in
    place), twice over, and the layer I/O (which ``diag`` does not rotate) is left as it was."""
    la = fit_bt(reward_model, pair_loader, subset, hessian, prior_precision=0.7)
    structure = structure_for(la)
    x, y = pairs[0][:9, 0], pairs[0][9:18, 1]
    io_x, io_y = (structure.recorder.run(lambda z=z: la.model(z)) for z in (x, y))
    taps = [*io_x.acts, *io_x.grads, *io_y.acts, *io_y.grads]
    before = [t.clone() for t in taps]
    var_x, var_y, _ = structure.crosses([io_x, io_y], [(0, 0), (1, 1), (0, 1)])
    for _ in range(2):
        alone_x, alone_y = structure.crosses([io_x, io_y], [(0, 0), (1, 1)])
        torch.testing.assert_close(alone_x, var_x, rtol=1e-13, atol=0)
        torch.testing.assert_close(alone_y, var_y, rtol=1e-13, atol=0)
        torch.testing.assert_close(structure.cross(io_y, io_y), var_y, rtol=1e-13, atol=0)
    assert all(torch.equal(t, b) for t, b in zip(taps, before, strict=True))


@pytest.mark.parametrize(("subset", "hessian"), CASES, ids=[f"{s}-{h}" for s, h in CASES])
def test_curvature_state_names_the_fitted_tensors(reward_model, pair_loader, subset, hessian):
    la = fit_bt(reward_model, pair_loader, subset, hessian)
    state = STRUCTURES[hessian].curvature_state(la)
    if hessian == "kron":
        kfacs = la.H_facs.kfacs
        assert sorted(state) == sorted(
            f"H_facs.{i}.{j}" for i, f in enumerate(kfacs) for j in range(len(f))
        )
        assert all(
            state[f"H_facs.{i}.{j}"] is f for i, fs in enumerate(kfacs) for j, f in enumerate(fs)
        )
    else:
        assert list(state) == ["H"] and state["H"] is la.H


def test_eigenvalues_per_parameter_tensor(reward_model, pair_loader):
    for cls in (DiagStructure, KronStructure, FullStructure):
        la = fit_bt(reward_model, pair_loader, "all", cls.name)
        groups = cls.curvature_eigenvalues(la)
        n = sum(g.numel() for g in groups)
        assert n == la.n_params
        assert len(groups) == (1 if cls is FullStructure else len(list(reward_model.parameters())))


def test_unsupported_laplace_class_is_refused():
    class Other:  # not one of laplace-torch's diag, kron or full posteriors
        pass

    with pytest.raises(NotImplementedError, match="supports laplace-torch's diag, kron and full"):
        structure_for(Other())  # type: ignore[arg-type]


@pytest.mark.parametrize(("subset", "hessian"), CASES, ids=[f"{s}-{h}" for s, h in CASES])
def test_float32_crosses_are_the_float64_ones_to_rounding(pairs, subset, hessian):
    """A float32 model's variances and pair covariances from layer I/O (rotated, contracted
    and summed in float32) equal the same posterior's in float64 to float32 rounding."""
    from conftest import make_net
    from torch.utils.data import DataLoader, TensorDataset

    from bt_laplace import PairwiseRewardModel

    x, y = pairs
    model = PairwiseRewardModel(make_net().float()).eval()
    la = fit_bt(model, DataLoader(TensorDataset(x.float(), y), batch_size=20), subset, hessian)
    structure = structure_for(la)
    items = torch.randn(40, x.shape[-1], generator=torch.Generator().manual_seed(3))
    res = structure.recorder.run(lambda: la.model(items))
    other = structure.recorder.run(lambda: la.model(items.flip(0)))
    double = [
        LayerIO(r.output.double(), [a.double() for a in r.acts], [g.double() for g in r.grads])
        for r in (res, other)
    ]
    pairs_ = [(0, 0), (1, 1), (0, 1)]
    got = structure.crosses([res, other], pairs_)
    want = structure.crosses(double, pairs_)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-6 * float(w.abs().max()))
