"""docs/results/calibration.md and calibration.png from docs/data/calibration.json
(bench_calibration)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from _common import environment_lines, md_table


def render(data: dict[str, Any], page: Path) -> str:
    setup = data["setup"]
    patients, pairs, hidden = setup["patients"], setup["pairs"], setup["hidden"]

    def ms(vals: list[float], digits: int = 4) -> str:
        a = np.array(vals)
        if np.all(np.isnan(a)):
            return "-"
        return f"{a.mean():.{digits}f} ± {a.std(ddof=1) if len(a) > 1 else 0:.{digits}f}"

    rows = []
    for name, ms_list in data["metrics"].items():
        rows.append(
            [name]
            + [ms([m[k] for m in ms_list]) for k in ("acc", "nll", "brier", "ece")]
            + [ms(data["prior"][name], 3), ms(data["seconds"][name], 2)]
        )
    header = [
        "method",
        "accuracy (higher better)",
        "NLL (lower)",
        "Brier (lower)",
        f"ECE, {setup['bins']} bins (lower)",
        "prior precision (marglik)",
        "fit + predict s",
    ]

    png = page.with_suffix(".png")
    plot(data["reliability_seed0"], png)
    parts = [
        "# Calibration on held-out pairs: MAP vs laplace-torch vs bt_laplace",
        "",
        *environment_lines(data["environment"]),
        f"- Total run time: {data['elapsed']:.0f} s" + (" (quick mode)" if data["quick"] else ""),
        "",
        "## Setup",
        "",
        "- Data: `sklearn.datasets.load_diabetes()` (442 patients, 10 features, target = disease "
        "progression after one year; bundled with scikit-learn, no download). Features and "
        "target standardized with train-row statistics.",
        f"- Rows split per seed into train/val/test = {patients['train']}/{patients['val']}/"
        f"{patients['test']} patients *before* pairing: test pairs involve only unseen "
        "patients.",
        f"- Pairs: {pairs['train']} train, {pairs['val']} validation, {pairs['test']} test "
        "(random distinct rows of each split; validation pairs only pick the MAP training epoch, "
        "every prior precision is set by marglik on the train pairs). Label "
        f"`y ~ Bernoulli(sigmoid({setup['beta']:g} (z_j - z_i)))`, `z` the standardized "
        "target: item 1 preferred when its target is larger, with Bradley-Terry noise.",
        f"- Model: MLP `10 -> {hidden} -> {hidden} -> 1` (tanh), float64, MAP by AdamW "
        f"(lr 3e-3, weight decay 1e-4, batch 64, up to {setup['epochs']} epochs, early-stopped "
        "at the epoch of best validation NLL: epochs chosen per seed "
        f"{data['epochs_chosen']}). The same MAP model per seed for all methods.",
        "- Posteriors: scalar prior precision by marglik (laplace-torch's Adam procedure: its "
        "`optimize_prior_precision` for laplace-torch, `fit_reward_posterior`'s eigenvalue "
        "version for bt_laplace; rows marked evidence='exact' maximize the exact-GGN "
        "evidence instead, the same prior for every structure). laplace-torch "
        "probabilities are its own `la(x, fitting=True, link_approx='probit')[:, 1]` with its "
        "default backend (CurvlinopsGGN); bt_laplace's are `post.preference_probability(x)` "
        "(probit on the reward difference, with the covariance). laplace-torch last-layer "
        "cannot predict on pairs (see docs/results/accuracy.md), so it is not in the table.",
        "- ECE: top-label confidence `max(p, 1-p)` vs accuracy, 15 equal-width bins on [0, 1]. "
        "*oracle*: the true label probability `sigmoid(BETA dz)`, the floor for NLL and Brier "
        "(its ECE is sampling noise only).",
        f"- Mean ± std over {data['seeds']} seeds (seed changes the split, the pairs, the labels "
        "and the MAP initialization).",
        "",
        "## Results (held-out test pairs)",
        "",
        md_table(header, rows),
        "",
        f"Reliability diagram (seed 0, bins with >= 10 pairs): `docs/results/{png.name}`.",
        "",
        f"![reliability diagram]({png.name})",
        "",
    ]
    return "\n".join(parts)


def plot(curves: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    ax.plot([0.5, 1], [0.5, 1], color="0.6", ls=":", label="perfect calibration")
    styles = {"MAP": ("k", "o"), "oracle": ("0.5", "x")}
    for name, (xs, ys, _) in curves.items():
        key = name.split(" ")[0]
        color, marker = styles.get(key, (None, "s" if "laplace-torch" in name else "^"))
        ls = "--" if "laplace-torch" in name else "-"
        ax.plot(xs, ys, marker=marker, ls=ls, color=color, label=name, ms=4)
    ax.set_xlabel("confidence max(p, 1 - p)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.3, 1.02)
    ax.set_title("Diabetes preference pairs, held-out patients (seed 0)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
