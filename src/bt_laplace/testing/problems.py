"""Teacher-labelled preference problems and MAP training with the Bradley-Terry loss.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``D`` features, ``H`` hidden width.

Call with torch's default dtype set as the caller wants it (the benchmarks use float64 where they
compare with brute force). Seeds are taken from the arguments; where a function draws from
torch's global generator, it says so.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace.model import PairwiseRewardModel

__all__ = ["mlp", "teacher_pairs", "bradley_terry_epoch", "train_map"]


def mlp(d: int, h: int, act: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """The reward network ``D -> H -> H -> 1`` with activation ``act`` (global generator).

    Example:
        >>> mlp(8, 32)(torch.zeros(4, 8)).shape
        torch.Size([4, 1])
    """
    return nn.Sequential(nn.Linear(d, h), act(), nn.Linear(h, h), act(), nn.Linear(h, 1))


def teacher_pairs(d: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of standard-normal items labelled by a random teacher with reward std 2.

    Seeds torch's global generator with ``seed``, draws a teacher ``D -> 32 -> 1`` (tanh) and
    ``n`` pairs, and labels them ``y ~ Bernoulli(sigmoid(r(x_1) - r(x_0)))``.

    Returns:
        ``(x (n, 2, D), y (n,))``.

    Example:
        >>> x, y = teacher_pairs(3, 5, seed=0)
        >>> x.shape, y.shape
        (torch.Size([5, 2, 3]), torch.Size([5]))
    """
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():
        x = torch.randn(n, 2, d)
        r = teacher(x).squeeze(-1)
        r = 2 * r / r.std()
        y = torch.bernoulli(torch.sigmoid(r[:, 1] - r[:, 0])).long()
    return x, y


def bradley_terry_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
) -> None:
    """One epoch of MAP training of a pair model, one optimizer step per batch.

    The loss is the cross-entropy over the two logits of each pair, ``-log sigmoid`` of the
    preferred minus the other reward: the Bradley-Terry negative log-likelihood.

    Args:
        model: ``model(x (B, 2, ...)) -> logits (B, 2)``.
        loader: batches ``(x (B, 2, ...), y (B,))``, ``y`` the index of the preferred item.
        optimizer: over the parameters to train.
    """
    for xb, yb in loader:
        optimizer.zero_grad()
        cross_entropy(model(xb), yb).backward()
        optimizer.step()


def train_map(
    model: PairwiseRewardModel,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 5,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
    batch_size: int = 64,
) -> PairwiseRewardModel:
    """MAP training by AdamW on shuffled batches (global generator), in place.

    Args:
        model: the pair model to train.
        x: pairs ``(B, 2, ...)``.
        y: labels ``(B,)``.
        epochs: passes over the pairs.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: pairs per step.

    Returns:
        ``model``, in eval mode.

    Example:
        >>> x, y = teacher_pairs(3, 64, seed=0)
        >>> model = train_map(PairwiseRewardModel(mlp(3, 8)), x, y, epochs=1)
        >>> model.training
        False
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    for _ in range(epochs):
        bradley_terry_epoch(model, loader, opt)
    return model.eval()
