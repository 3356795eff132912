"""docs/results/queries.md from docs/data/queries.json (bench_queries.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, fmt_s, fmt_x, md_table

QUERIES = (
    "post(x)",
    "relative_reward(groups)",
    "best_of_n(groups)",
    "preference_probability (quadrature)",
    "preference_probability (probit)",
)


def _cell(row: dict[str, float], name: str) -> str:
    if name not in row:
        return "-"
    return f"{fmt_s(row[name])} ({fmt_x(row[name] / row[f'{name} forward'])})"


def _ratio(row: dict[str, float], name: str) -> str:
    if name not in row:
        return "-"
    cell = fmt_x(row[name] / row[f"{name} forward"])
    if name in ("relative_reward(groups)", "best_of_n(groups)"):  # and to post(x), both ratios
        post = row["post(x)"] / row["post(x) forward"]
        cell += f" ({fmt_x(row[name] / row[f'{name} forward'] / post)} post(x))"
    return cell


def _mlp_setup(first: dict[str, Any]) -> str:
    return (
        f"{first['items']:,} candidates of {first['prompts']} prompts (ids interleaved), "
        f"{first['pairs']:,} pairs of the same items for the pair probabilities; the benchmark "
        "MLP (64-256-256-1 tanh, 82,689 parameters) after MAP training on 4,000 pairs, default "
        "`batch_size` (4,096 items). Each time is the best of the repeats; each ratio divides it "
        "by the best time of the plain forward `model(x)` under `torch.no_grad()`, timed in "
        "turn with it in the same run (the machine is shared: only ratios from one run are "
        "compared; the forward takes 12-30 ms, and a ratio moves by about a quarter from one "
        "call to the next under the other engineers' load). `full` over all weights (an "
        "82,689^2 covariance, 55 GB) is not run. For the grouped queries the ratio to "
        "`post(x)` (both to the forward) follows in brackets."
    )


def _minilm_setup(first: dict[str, Any]) -> str:
    return (
        f"{first['items']} texts, "
        f"{first['prompts']} training questions of `examples/trl_minilm.py` with 8 answers "
        "each (its 4 best trained styles and one text of each unlike kind: code, another "
        "language, keyword stuffing, numbers), prompt ids interleaved, one query batch "
        f"(`batch_size={first['items']}`); "
        f"{first['pairs']} pairs of adjacent candidates for the pair probabilities. The model "
        "is that example's: MiniLM (all-MiniLM-L6-v2) as a one-output classifier with peft "
        "LoRA (r=8 on query and value), here trained one Bradley-Terry epoch on "
        f"{first['fit_pairs']} of its preference pairs, on which the posteriors are fitted: "
        "the score head (last_layer/kron) and the LoRA adapters with the head (all/kron); "
        "the number of parameters follows the structure. Every query is given the "
        "texts and tokenizes them; the forward reference tokenizes the same texts with the "
        "same collator and runs the model on them under `torch.no_grad()`, timed in turn with "
        "each query. Each time is the best of the repeats, each ratio to the forward of the "
        "same run; for the grouped queries the ratio to `post(x)` follows in brackets."
    )


_MLP_READING = (
    "Reading, all/kron `post(x)` (issue 22, item 2): per batch it is the forward with autograd, "
    "one backward, six rotations of 4,096 x 256 sides into the Kronecker eigenbases (the first "
    "and second layers' output gradients, for weight and bias each, and the second and third "
    "layers' inputs) and one 256 x 256 product with the variances `M`; each rotation costs "
    "about the forward's largest product, so about five forwards of work are left. Since "
    "5258cb7 the rotated sides go into buffers reused from one parameter tensor to the next "
    "and are squared in place (no fresh memory to fault in per tensor), the head's product "
    "is a matrix-vector product and the input check one sum: `post(x)` 82-98 ms -> 62-81 ms "
    "in the four runs beside main at 55068b9, 4.9-5.2x the forward at load 1.0-2.2 (main "
    "4.9-7.3x; its forward ran slow in the first run); in the two session-9 runs on a quieter "
    "machine (load 0.7-1.8, this head against main at 55068b9) 71.4 / 64.7 ms, 5.52x / 4.98x "
    "(main 83.4 / 85.9 ms, 6.35x / 5.81x): at the 5x of issue 22, not under it in every run. "
    "`M` as a few float64 terms of its SVD, exact to below float32 rounding, was measured and "
    "left out: the fresh float64 copies cost more than the product they save "
    "(benchmarks/experiments/separable_kron.py).\n\n"
    "Reading, grouped queries (issue 22, item 1): last_layer/full `relative_reward(groups)` "
    "53.6 / 52.5 ms -> 27.4 / 35.9 ms in the session-9 runs (1.20x / 1.18x its `post(x)`, was "
    "about 2x): its centred Jacobians are now weighted by the covariance in the model's "
    "precision, as `post(x)` does, not in float64. all/kron grouped queries are 1.5-1.8x the "
    "now faster `post(x)` (103-116 ms; 1.45-1.53x in alternating single-query timings of the "
    "same build); all/diag 1.7-2.0x (three passes of items x rows x cols against `post(x)`'s "
    "two: about 1.6x is this method's floor)."
)


def render(data: dict[str, Any], page: Path) -> str:
    runs = data["runs"]
    first = next(iter(runs.values()))
    minilm = first.get("model") == "minilm"
    parts = [
        "# Queries at the cost of the forward" + (": MiniLM" if minilm else ""),
        "",
        _minilm_setup(first) if minilm else _mlp_setup(first),
        "",
    ]
    if not minilm:
        parts += [_MLP_READING, ""]
    if len(runs) > 1:
        labels = list(runs)
        header = ["configuration", "query", *(f"{label} (x forward)" for label in labels)]
        table = []
        for config in first["times"]:
            for name in QUERIES:
                cells = [_ratio(runs[label]["times"].get(config, {}), name) for label in labels]
                if any(c != "-" for c in cells):
                    table.append([config, f"`{name}`", *cells])
        parts += ["## Ratios to the forward, run by run", "", md_table(header, table), ""]
    for label, run in runs.items():
        header = ["configuration", "forward", *(f"`{q}`" for q in QUERIES)]
        table = [
            [config, fmt_s(row["post(x) forward"]), *(_cell(row, q) for q in QUERIES)]
            for config, row in run["times"].items()
        ]
        parts += [
            f"## {label}",
            "",
            *environment_lines(run["environment"]),
            f"- bt_laplace imported from: `{run['environment']['bt_laplace_from']}`",
            "",
            md_table(header, table),
            "",
        ]
    return "\n".join(parts)
