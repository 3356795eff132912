"""No copy of the network: a last-layer posterior reads the user's model itself.

laplace-torch's ``LLLaplace`` deep-copies the model (a second reward model in memory) and keeps
answering from the copy after the model changed. Here the posterior holds the same parameter
tensors as the model, leaves no hook on it, and refuses queries once the model's weights
change, for every structure and both subsets.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_net
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl

STRUCTURES = ["diag", "kron", "full"]
SUBSETS = ["last_layer", "all"]
REPO = Path(__file__).resolve().parents[1]


def fitted(subset: str, structure: str) -> tuple[btl.PairwiseRewardModel, btl.RewardPosterior]:
    model = btl.PairwiseRewardModel(make_net()).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 2, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights=subset, hessian_structure=structure, prior_precision=1.0
    )
    return model, post


def items() -> torch.Tensor:
    return torch.randn(6, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_a_last_layer_posterior_holds_the_models_own_tensors_and_no_hook(structure):
    model, post = fitted("last_layer", structure)
    post(items())
    post.preference_probability(items().reshape(3, 2, 5))
    network = post.laplace.model.model
    assert network is model
    held = {t.data_ptr() for t in post.laplace.model.parameters()}
    assert held == {t.data_ptr() for t in model.parameters()}
    assert post.laplace.model.last_layer is model.net[4]
    hooks = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooks == []
    pickle.loads(pickle.dumps(model))  # a hook holding a closure would make it unpicklable


def _train_further(model: nn.Module) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(items()).square().sum()
    loss.backward()
    opt.step()


def _load_other_weights(model: nn.Module) -> None:
    model.load_state_dict(btl.PairwiseRewardModel(make_net(seed=9)).state_dict())


def _change_dtype(model: nn.Module) -> None:
    model.float()


def test_the_last_layer_search_keeps_one_input_and_finds_laplace_torchs_layer():
    """The search holds the input of its current candidate only (laplace-torch's keeps every
    module's: a batch of every activation of the network) and picks the layer laplace-torch
    picks: the leaf module whose first call comes last, here the head, though a leaf called
    before it runs again after it."""
    from laplace.utils.feature_extractor import FeatureExtractor

    from bt_laplace.structures.inplace import InPlaceFeatureExtractor

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.act, self.head = nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # act is called again after the head: the head's first call is still the last one
            return self.act(self.head(self.act(self.body(x))))

    net = Reused().double()
    x = items()
    ours = InPlaceFeatureExtractor(net)
    out = ours.find_last_layer(x)
    theirs = FeatureExtractor(Reused().double())
    theirs.find_last_layer(x)
    assert ours._last_layer_name == theirs._last_layer_name == "head"
    assert list(ours._features) == ["head"]  # one input held, not every module's
    torch.testing.assert_close(ours._features["head"], net.act(net.body(x)))
    torch.testing.assert_close(out, net(x))
    assert not any(m._forward_hooks for m in net.modules())


@pytest.mark.parametrize("change", [_train_further, _load_other_weights, _change_dtype])
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("subset", SUBSETS)
def test_queries_after_the_weights_changed_are_refused_with_the_fix(subset, structure, change):
    model, post = fitted(subset, structure)
    before = post(items())
    change(model)
    x = items().to(next(model.parameters()).dtype)
    with pytest.raises(RuntimeError, match=r"weights changed.*Refit with"):
        post(x)
    with pytest.raises(RuntimeError, match=r"weights changed"):
        post.preference_probability(x.reshape(3, 2, 5))
    assert torch.isfinite(before.variance).all()


def test_a_refit_after_further_training_answers_with_the_new_weights():
    model, post = fitted("last_layer", "kron")
    _train_further(model)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 2, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=g)
    new = btl.fit_reward_posterior(
        model,
        DataLoader(TensorDataset(x, y), batch_size=16),
        subset_of_weights="last_layer",
        prior_precision=1.0,
    )
    with torch.no_grad():
        torch.testing.assert_close(new(items()).mean, model(items()).reshape(-1))


@pytest.mark.slow
def test_a_last_layer_fit_of_a_bf16_model_grows_the_process_by_far_less_than_the_model():
    """A 128 MB bf16 model: the fit adds its posterior state and one batch of activations
    (issue 17: at most 40 MB), not a copy of the network (measured in a fresh process:
    benchmarks/bench_half_precision.py --memory-only)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_half_precision.py"), "--memory-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    ).stdout
    line = next(row for row in out.splitlines() if row.startswith("memory:"))
    fields = dict(part.split("=") for part in line.split()[1:])
    assert float(fields["model_mb"]) >= 100
    assert float(fields["growth_mb"]) <= 40, line
