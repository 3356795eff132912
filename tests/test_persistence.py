"""The saved record of a laplace-torch posterior, below the posterior: each structure saves and
restores its own curvature, and a restored laplace-torch object predicts as the fitted one."""

from __future__ import annotations

import pytest
import torch
from conftest import make_net

import bt_laplace as btl
from bt_laplace.persistence import laplace_record, read_record, restore_laplace, write_record
from bt_laplace.predictive import Predictive
from bt_laplace.structures import STRUCTURES, structure_class

CASES = [(s, h) for s in ("all", "last_layer") for h in STRUCTURES]


@pytest.mark.parametrize(("subset", "hessian"), CASES, ids=[f"{s}-{h}" for s, h in CASES])
def test_a_restored_laplace_object_predicts_bit_identically(pair_loader, tmp_path, subset, hessian):
    model = btl.PairwiseRewardModel(make_net()).eval()
    post = btl.fit_reward_posterior(
        model, pair_loader, subset_of_weights=subset, hessian_structure=hessian
    )
    config, tensors = laplace_record(post.laplace)
    cls = structure_class(post.laplace)
    assert set(cls.saved_state(post.laplace)) <= set(tensors)  # the structure's own state
    assert all(config[name] is not None for name in cls.saved_settings)
    write_record(tmp_path, config, tensors)
    again = restore_laplace(btl.PairwiseRewardModel(make_net()).eval(), *read_record(tmp_path))
    assert type(again) is type(post.laplace)
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want, got = Predictive(post.laplace).item_moments(x), Predictive(again).item_moments(x)
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w, g)


def test_a_record_names_no_structure_outside_its_class(pair_loader):
    """The record's keys for the curvature come from the structure (``curvature.`` and, for
    kron, the eigendecomposition), the rest are the posterior's own tensors."""
    model = btl.PairwiseRewardModel(make_net()).eval()
    post = btl.fit_reward_posterior(model, pair_loader, hessian_structure="kron")
    _, tensors = laplace_record(post.laplace)
    own = {"prior_precision", "prior_mean", "mean", "loss"}
    assert {k for k in tensors if k not in own} == set(
        structure_class(post.laplace).saved_state(post.laplace)
    )
