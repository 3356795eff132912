"""Data and MAP models shared by bench_prior.py and bench_kron_floor.py (the same models).

Call with torch's default dtype set as the script wants it (both use float64).
"""

from __future__ import annotations

import torch
from _common import bradley_terry_epoch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl


def make_data(d: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of standard-normal items labelled by a random teacher (reward std 2)."""
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():
        x = torch.randn(n, 2, d)
        r = teacher(x).squeeze(-1)
        r = 2 * r / r.std()
        y = torch.bernoulli(torch.sigmoid(r[:, 1] - r[:, 0])).long()
    return x, y


def train_map(d: int, h: int, x: torch.Tensor, y: torch.Tensor) -> btl.PairwiseRewardModel:
    net = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))
    model = btl.PairwiseRewardModel(net)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    for _ in range(5):
        loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
        bradley_terry_epoch(model, loader, opt)
    return model.eval()
