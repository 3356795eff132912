"""Shared fixtures: a tiny float64 MLP reward model and preference pairs, seeded here."""

from __future__ import annotations

import pytest
import torch
from laplace import Laplace
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace import PairwiseRewardModel
from bt_laplace.curvature import BradleyTerryGGN, PairKronLaplace, PairKronLLLaplace

D_IN, HIDDEN, N_PAIRS = 5, 7, 60


def make_net(seed: int = 0, d_in: int = D_IN, hidden: int = HIDDEN) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 1),
    ).double()


@pytest.fixture
def reward_model() -> PairwiseRewardModel:
    """A 5-7-7-1 tanh MLP reward model in float64, in eval mode."""
    return PairwiseRewardModel(make_net()).eval()


@pytest.fixture
def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """60 random pairs ``(60, 2, 5)`` with random labels ``(60,)``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_PAIRS, 2, D_IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (N_PAIRS,), generator=g)
    return x, y


@pytest.fixture
def pair_loader(pairs: tuple[torch.Tensor, torch.Tensor]) -> DataLoader:
    """The 60 pairs in batches of 16 (the last batch is smaller)."""
    return DataLoader(TensorDataset(*pairs), batch_size=16)


def fit_bt(model, loader, subset: str, structure: str, **kw):
    """A laplace-torch posterior with the BradleyTerryGGN backend, fitted on ``loader``."""
    if structure == "kron":
        cls = PairKronLaplace if subset == "all" else PairKronLLLaplace
        la = cls(model, "reward_modeling", backend=BradleyTerryGGN, **kw)
    else:
        la = Laplace(
            model,
            "reward_modeling",
            subset_of_weights=subset,
            hessian_structure=structure,
            backend=BradleyTerryGGN,
            **kw,
        )
    la.fit(loader)
    return la


class SequenceNet(nn.Module):
    """Items are sequences (L, 3); the head runs per position, then positions are averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x))).mean(1)  # (N, L, 1) -> (N, 1)


class ReusedNet(nn.Module):
    """Items are sequences (L, 3); one linear layer is applied twice, which the activation and
    gradient taps cannot split, so everything goes through laplace-torch's Jacobians."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.body(torch.tanh(self.body(x))))
        return self.head(h).mean(1)


def _sequence_pairs(net_class: type[nn.Module], seed: int):
    """A model of ``net_class`` (items (5, 3)), 12 random pairs and a loader of 3 batches."""
    torch.manual_seed(seed)
    model = PairwiseRewardModel(net_class().double(), item_ndim=2).eval()
    x = torch.randn(12, 2, 5, 3, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 2, (12,))), batch_size=5)
    return model, x, loader


@pytest.fixture
def reused_model_and_pairs():
    return _sequence_pairs(ReusedNet, seed=4)


@pytest.fixture
def sequence_model_and_pairs():
    return _sequence_pairs(SequenceNet, seed=3)
