"""Quickstart: the laplace-torch reward-modeling example, done right with bt_laplace.

Ten random preference pairs of 3-d vectors, a 3-100-1 MLP trained with AdamW for 10 epochs,
a Laplace posterior over all weights with a marginal-likelihood prior, then predictions:
reward mean and variance for 5 test items, preference probabilities for a few pairs, and a plot
of the reward mean +- 2 standard deviations along a line through input space.

Run: python examples/quickstart.py [--out PATH] (default: quickstart.png beside this script)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from datasets import Dataset
from torch import nn

import bt_laplace as btl

#: where the plot goes without ``--out``: beside this script, whatever the current directory
DEFAULT_OUT = Path(__file__).resolve().with_name("quickstart.png")


def main(out: str | Path = DEFAULT_OUT) -> None:
    torch.manual_seed(0)

    # 1. Preference data: label = index (0 or 1) of the preferred item of the pair.
    rows = [
        {"x0": torch.randn(3), "x1": torch.randn(3), "label": int(torch.randint(2, ()))}
        for _ in range(10)
    ]
    dataset = Dataset.from_list(rows)
    loader = btl.preference_dataloader(
        dataset, batch_size=3, first="x0", second="x1", label="label"
    )

    # 2. A single-item reward network, wrapped to score pairs: (B, 2, 3) -> (B, 2).
    net = nn.Sequential(nn.Linear(3, 100), nn.ReLU(), nn.Linear(100, 1))
    model = btl.PairwiseRewardModel(net)

    # 3. MAP training with the Bradley-Terry loss (cross-entropy over the two logits).
    opt = torch.optim.AdamW(model.parameters(), weight_decay=1e-3)
    for _ in range(10):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    # 4. Laplace over all weights, pair-correct Kronecker curvature, marglik prior.
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="all", hessian_structure="kron", prior_precision="marglik"
    )
    print(post)

    # 5. Regression-style answers for items, calibrated probabilities for pairs.
    x_test = torch.randn(5, 3)
    mean, variance = post(x_test)
    print(
        f"test items {tuple(x_test.shape)} -> mean {tuple(mean.shape)}, "
        f"variance {tuple(variance.shape)}"
    )
    for i, (m, v) in enumerate(zip(mean.tolist(), variance.tolist(), strict=True)):
        print(f"  item {i}: reward {m:+.3f} +- {v**0.5:.3f}")
    pairs = torch.stack([x_test[:-1], x_test[1:]], dim=1)  # (4, 2, 3)
    probs = post.preference_probability(pairs)
    for i, p in enumerate(probs.tolist()):
        print(f"  P(item {i + 1} preferred over item {i}) = {p:.3f}")

    # 6. Uncertainty along a line through input space grows away from the data.
    import matplotlib

    matplotlib.use("Agg")
    from bt_laplace.plot import plot_reward_band

    t = torch.linspace(-6, 6, 200)
    direction = torch.tensor([1.0, 0.5, -0.5])
    mean, variance = post(t[:, None] * direction)
    items = torch.cat([torch.stack([r["x0"], r["x1"]]) for r in rows])
    ax = plot_reward_band(
        t, mean, variance, k=2, train_t=items @ direction / direction.dot(direction)
    )
    ax.set_xlabel("position along the line t * (1, 0.5, -0.5)")
    ax.figure.tight_layout()
    ax.figure.savefig(out, dpi=120)
    print(f"saved {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where to save the plot")
    main(parser.parse_args().out)
