"""docs/results/prior_sweep.md and prior_sweep.png from docs/data/prior_sweep.json
(bench_prior_sweep)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from _common import environment_lines, md_table

METRICS = (("test_nll", "test NLL"), ("test_ece", "test ECE"), ("auroc", "OOD AUROC (std)"))


def _ms(vals: list[float], digits: int = 3) -> str:
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return f"{m:.{digits}f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def _prior(vals: list[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in vals)


STRUCTURES = {
    "kron": "kron (default)",
    "diag": "diag",
    "exact": "exact (full GGN, pair kernel)",
}


def render(data: dict[str, Any], page: Path) -> str:
    png = page.with_suffix(".png")
    plot(data, png)
    setup = data["setup"]
    parts = [
        "# The prior precision on real ratings: the evidence is right for the exact posterior, "
        "kron needs less, held-out items tell how much",
        "",
        *environment_lines(data["environment"]),
        f"- Total run time: {data['elapsed']:.0f} s",
        "",
        "Data, splits, model and MAP training as in [real_data.md](real_data.md) "
        f"({setup['train_pairs']:,} training pairs, {setup['val_pairs']:,} validation pairs, "
        f"{setup['test_pairs']:,} test pairs of unseen items; MLP d-{setup['hidden']}-"
        f"{setup['hidden']}-1, tanh, {setup['epochs']} epochs of AdamW). Three posteriors over "
        "all weights of the same MAP model, each at every prior precision of a grid (log10 "
        f"from {setup['log10_grid'][0]:g} to {setup['log10_grid'][-1]:g}, "
        f"{len(setup['log10_grid'])} points): `kron` (the default), `diag`, and the *exact* "
        "Laplace posterior (MAP mean, covariance `(H + delta I)^-1` with the exact "
        "Bradley-Terry GGN `H`, computed through its N x N pair kernel from `torch.func` "
        "Jacobians: a reference, `O(N^2)` a query). Rules that pick the prior:",
        "",
        "- *exact evidence*: `fit_reward_posterior(model, loader, prior_precision='marglik')` "
        "(the evidence of the exact GGN, so the same prior for every structure).",
        "- *default: evidence, calibrated on held-out items*: `fit_reward_posterior(model, "
        "loader)`: the exact evidence's prior, scaled so that the structure, fitted without a "
        "fifth of the training items, gives pairs of those items the exact posterior's mean "
        "log variance (no labels).",
        "- *gridsearch on validation pairs*: `fit_reward_posterior(model, loader, "
        "val_loader=val_loader)` (the default picks it when given a `val_loader`); for diag and "
        "exact, the grid point with the least validation NLL.",
        "- *exact leave-one-out*: Laplace-GP leave-one-out NLL of the training pairs from the "
        "exact pair kernel (tried, not offered).",
        "- *least test NLL*: the best grid point on the test pairs, a bound no rule can beat.",
        "",
        f"Mean ± sd over {data['seeds']} seeds; the prior column lists the seeds.",
        "",
        f"![metrics against the prior precision]({png.name})",
        "",
    ]
    for name, runs in data["runs"].items():
        rows = []
        for key, label in STRUCTURES.items():
            for rule in runs[0]["picks"][key]:
                picks = [r["picks"][key][rule] for r in runs]
                fit = [r["fit_s"][rule] for r in runs if key == "kron" and rule in r["fit_s"]]
                rows.append(
                    [
                        label,
                        rule,
                        _prior([p["prior"] for p in picks]),
                        *(_ms([p[k] for p in picks]) for k, _ in METRICS),
                        _ms(fit, 1) if fit else "-",
                    ]
                )
        header = [
            "posterior",
            "rule",
            "prior precision (per seed)",
            *(t for _, t in METRICS),
            "fit s",
        ]
        parts += [
            f"## {name} ({runs[0]['n_params']:,} parameters)",
            "",
            md_table(header, rows),
            "",
        ]
    parts += notes(data)
    return "\n".join(parts)


def _mean_pick(data: dict[str, Any], name: str, key: str, rule: str, what: str) -> float:
    vals = [r["picks"][key][rule][what] for r in data["runs"][name]]
    return sum(vals) / len(vals)


def notes(data: dict[str, Any]) -> list[str]:
    out = ["## Reading", ""]
    for name in data["runs"]:

        def pick(key, rule, what, name=name):
            return _mean_pick(data, name, key, rule, what)

        ev = pick("kron", "exact evidence", "prior")
        out.append(
            f"- {name}: the evidence picks {ev:.3g} (mean over seeds). At that prior the exact "
            f"posterior has test NLL {pick('exact', 'exact evidence', 'test_nll'):.3f} and ECE "
            f"{pick('exact', 'exact evidence', 'test_ece'):.3f} (its best grid point: "
            f"{pick('exact', 'least test NLL (grid)', 'test_nll'):.3f} / "
            f"{pick('exact', 'least test NLL (grid)', 'test_ece'):.3f} at "
            f"{pick('exact', 'least test NLL (grid)', 'prior'):.3g}); kron has "
            f"{pick('kron', 'exact evidence', 'test_nll'):.3f} / "
            f"{pick('kron', 'exact evidence', 'test_ece'):.3f} there and needs "
            f"{pick('kron', 'least test NLL (grid)', 'prior'):.3g} for its best, "
            f"{pick('kron', 'least test NLL (grid)', 'test_nll'):.3f} / "
            f"{pick('kron', 'least test NLL (grid)', 'test_ece'):.3f}; validation pairs find "
            f"{pick('kron', 'gridsearch on validation pairs', 'prior'):.3g} "
            f"({pick('kron', 'gridsearch on validation pairs', 'test_nll'):.3f} / "
            f"{pick('kron', 'gridsearch on validation pairs', 'test_ece'):.3f}); the default's "
            f"held-out calibration picks "
            f"{pick('kron', 'default: evidence, calibrated on held-out items', 'prior'):.3g} "
            f"({pick('kron', 'default: evidence, calibrated on held-out items', 'test_nll'):.3f}"
            f" / "
            f"{pick('kron', 'default: evidence, calibrated on held-out items', 'test_ece'):.3f})."
        )
    out += [
        "- So the evidence is not what miscalibrates the default: for the exact Laplace "
        "posterior it lands at or next to the best grid point on both datasets. On warriner "
        "the structured covariances give pairs of unseen items too little variance at that "
        "prior, and kron needs a prior about 100 times smaller to make up for it (diag cannot: "
        "its best is at the grid's edge). Their blocks drop the covariance between layers; "
        "the Kronecker factorization inside a block is not the cause (with the exact GGN's "
        "diagonal in kron's eigenbasis, EK-FAC, George et al. 2018, test NLL and ECE at the "
        "evidence's prior moved by at most 0.0015 and 0.003 on seed 0, slightly worse on "
        "warriner; `python benchmarks/experiments/ekfac.py warriner 0`). "
        "On movielens kron and the exact posterior agree at "
        "the evidence's prior.",
        "- Training pairs do not show the gap: at the evidence's prior kron's mean margin "
        "variance on them is 0.8 (warriner) and 2.8 (movielens) times the exact posterior's "
        "(seed 0; `python benchmarks/experiments/match.py warriner 0`), "
        "so matching the two there would leave the warriner prior about where it is "
        "and raise the movielens one. Held-out training items do: the default fits kron and "
        "the exact posterior without them and matches the two on pairs of them, which closes "
        "most of warriner's gap without a label.",
        "- The exact posterior is not a default: it keeps an N x N Cholesky factor and costs "
        "`O(N^2 + N * widths)` a query item (by operation count, about 13 million "
        "multiply-adds per warriner word at 4,000 pairs against about 29,000 for its forward "
        "pass; not timed here), and its OOD AUROC is lower than kron's on both datasets "
        "(and than laplace-torch's in real_data.md). kron with the calibrated prior, or with "
        "validation pairs, has about the exact posterior's calibration and kron's OOD "
        "ranking; pass `val_loader` when you have them, or call "
        "`post.optimize_prior_precision(val_loader=...)` when they come later.",
        "- Leave-one-out from the training pairs fails the other way: it assumes the MAP is "
        "the mode *for each prior tried*, so a large prior keeps the fitted training margins "
        "and scores them as if held out. Training pairs share items, so even a correct "
        "leave-one-pair-out would measure seen items, not new ones.",
        "- Tried on seed 0 and not offered (one-off scripts, each run as "
        "`python benchmarks/experiments/NAME.py movielens|warriner 0`): the evidence with "
        "`||theta*||^2` restricted to the span of the pair Jacobians (it *raises* the prior, "
        "to 46 on warriner and 16 on movielens: test ECE .13 and .054; `proj.py`); "
        "leave-one-out with the cavity mean from a fixed training prior (picks the smallest "
        "prior of any grid; `loo2.py`); refining the mean (the linearized model's own MAP at "
        "each prior, Laplace-GP Newton in the pair kernel; movielens test NLL .71-.73 and "
        "accuracy .53-.59 at priors 0.01-3.2, worse than the MAP network's .645 / .646; "
        "`glm.py`).",
    ]
    return out + [""]


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["runs"])
    fig, axes = plt.subplots(len(names), 3, figsize=(12, 3.3 * len(names)), squeeze=False)
    colors = {"kron": "C0", "diag": "C1", "exact": "k"}
    for row, name in zip(axes, names, strict=True):
        runs = data["runs"][name]
        grid = runs[0]["grid"]
        for ax, (metric, title) in zip(row, METRICS, strict=True):
            for key, label in STRUCTURES.items():
                mean = [
                    sum(r["curves"][key][i][metric] for r in runs) / len(runs)
                    for i in range(len(grid))
                ]
                ax.plot(grid, mean, color=colors[key], lw=1.6, label=label)
            ev = _mean_pick(data, name, "kron", "exact evidence", "prior")
            va = _mean_pick(data, name, "kron", "gridsearch on validation pairs", "prior")
            de = _mean_pick(
                data, name, "kron", "default: evidence, calibrated on held-out items", "prior"
            )
            ax.axvline(ev, color="C3", ls="--", label="exact evidence")
            ax.axvline(de, color="C4", ls="-.", label="default (kron, held-out calibration)")
            ax.axvline(va, color="C2", ls=":", label="gridsearch (kron, val pairs)")
            ax.set_xscale("log")
            ax.set_title(f"{name}: {title}")
            ax.set_xlabel("prior precision")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
