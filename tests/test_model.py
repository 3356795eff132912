"""PairwiseRewardModel: modes decided from item_ndim, output shapes, and errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from bt_laplace import PairwiseRewardModel


class _LogitsNet(nn.Module):
    """Returns an object with `.logits`, like Hugging Face sequence-classification models."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.lin(x))


class _FlatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).squeeze(-1)


@pytest.mark.parametrize(
    "net", [nn.Linear(3, 1), _FlatNet(), _LogitsNet()], ids=["N-1", "N", "logits-attr"]
)
def test_pair_and_item_modes(net: nn.Module) -> None:
    model = PairwiseRewardModel(net)
    x = torch.randn(4, 2, 3)
    logits = model(x)
    assert logits.shape == (4, 2)
    rewards = model(x.reshape(8, 3))
    assert rewards.shape == (8, 1)
    # column i of the pair logits is the reward of item i
    torch.testing.assert_close(logits.reshape(8), rewards.reshape(8))


def test_item_ndim_two_distinguishes_pairs_of_matrices_from_items() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 1))
    model = PairwiseRewardModel(net, item_ndim=2)
    assert model(torch.randn(5, 2, 2, 3)).shape == (5, 2)
    # (5, 2, 3) are five items of shape (2, 3), not pairs: the rank decides, not dim 1
    assert model(torch.randn(5, 2, 3)).shape == (5, 1)


def test_rank_that_fits_neither_mode_is_an_error() -> None:
    model = PairwiseRewardModel(nn.Linear(3, 1))
    with pytest.raises(ValueError, match=r"\(B, 2, \*item\).*got \(8, 3, 3\)"):
        model(torch.randn(8, 3, 3))
    with pytest.raises(ValueError, match="item_ndim=1"):
        model(torch.randn(3))


def test_net_with_several_outputs_is_an_error() -> None:
    model = PairwiseRewardModel(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"one reward per item.*got \(4, 2\)"):
        model(torch.randn(4, 3))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(TypeError, match="`net` must be a torch.nn.Module"):
        PairwiseRewardModel(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`item_ndim` must be a non-negative int"):
        PairwiseRewardModel(nn.Linear(3, 1), item_ndim=-1)
    with pytest.raises(TypeError, match="`x` must be a torch.Tensor"):
        PairwiseRewardModel(nn.Linear(3, 1))([[1.0, 2.0, 3.0]])  # type: ignore[arg-type]


def test_net_returning_non_tensor_is_an_error() -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> list[float]:
            return [0.0] * len(x)

    with pytest.raises(TypeError, match="must return a tensor"):
        PairwiseRewardModel(Bad())(torch.randn(2, 3))
