"""docs/results/lora_accuracy.md from docs/data/lora_accuracy.json (bench_lora_accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, fmt_s, md_table


def render(data: dict[str, Any], page: Path) -> str:
    seeds = data["seeds"]
    names = list(next(iter(seeds.values()))["rows"])
    rows = []
    for name in names:
        cells = [name]
        for s in seeds.values():
            r = s["rows"][name]
            cells.append(f"{r['spearman']:.3f} / {r['median_abs_log_ratio']:.3f}")
        cells.append(fmt_s(sum(s["rows"][name]["fit_s"] for s in seeds.values()) / len(seeds)))
        rows.append(cells)
    header = ["posterior", *[f"seed {k}: Spearman / median abs log ratio" for k in seeds]]
    header.append("mean fit")
    setup = data["setup"]
    n_params = next(iter(seeds.values()))["n_params"]
    parts = [
        "# LoRA posterior variances against the exact Laplace posterior",
        "",
        *environment_lines(data["environment"]),
        "",
        "One-layer Llama (hidden 128, intermediate 256, 4 heads; random weights, float64), peft "
        f"LoRA r = 4 on q, k, v, o, gate, up, down plus the score head: {n_params:,} posterior "
        f"parameters. {setup['pairs']} pairs of {setup['length']} random tokens labelled by the "
        "model's own Bradley-Terry probabilities; prior precision "
        f"{setup['prior']:g} for every posterior. Reference: the exact Laplace posterior over "
        "the same parameters, `(H + I)^-1` with `H` the exact Bradley-Terry GGN from "
        "`torch.func.jacrev` Jacobians. Each cell: Spearman's rank correlation of the reward "
        f"variances of {setup['queries']} held-out items with the exact ones, and the median of "
        "`|log(v / v_exact)|` (0 is exact).",
        "",
        md_table(header, rows),
        "",
        "At hidden 128 every Kronecker factor is at most 2048 wide, so the default `kron` keeps "
        "them whole: it is today's kron, unchanged by the low-rank factors. The low-rank rows "
        "force every factor wider than 16 to its top `k` eigenpairs and the mean of the rest "
        "(`kron_full_width=16`), what an LLM's 4096- and 14336-wide factors get by default, to "
        "show what the truncation costs where the exact posterior can still be computed.",
        "",
        "Reading: on every seed the low-rank factors rank the items as the whole ones do "
        "(Spearman within 0.01 of them) and land closer to the exact scale: the remainder, the "
        "mean of the discarded eigenvalues, is smaller than the tail it replaces in the "
        "directions the items use. The block structure itself, not the truncation, is what "
        "separates kron from the exact posterior here. Issue 18 quotes Spearman .68-.81 for "
        "kron on a one-layer Llama of this width; its setup (data, adapter initialization, "
        "prior) was not recorded, and on this one every structure ranks the items well.",
        "",
    ]
    return "\n".join(parts)
