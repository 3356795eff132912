"""docs/results/half_precision[_gpu].md from docs/data/half_precision[_gpu].json
(benchmarks/bench_half_precision.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, md_table

ROWS = [
    ("last layer `kron` fit", "ll_kron_fit_s", "forward_s"),
    ("last layer `diag` fit", "ll_diag_fit_s", "forward_s"),
    ("last layer `full` fit", "ll_full_fit_s", "forward_s"),
    ("LoRA `kron` fit (all weights)", "lora_kron_fit_s", "lora_forward_s"),
    ("last layer `kron` `post(items)`", "ll_kron_query_s", "query_forward_s"),
    ("last layer `diag` `post(items)`", "ll_diag_query_s", "query_forward_s"),
    ("last layer `full` `post(items)`", "ll_full_query_s", "query_forward_s"),
    ("LoRA `kron` `post(items)`", "lora_kron_query_s", "query_forward_s"),
]


def render(data: dict[str, Any], page: Path) -> str:
    rows, setup = data["rows"], data["setup"]
    names = [r["dtype"] for r in rows]
    table = []
    for label, key, ref in ROWS:
        cells = [label]
        for r in rows:
            cells.append(f"{r[key]:.2f} s ({r[key] / r[ref]:.1f}x)")
        cells.append(f"{rows[1][key] / rows[0][key]:.2f}")
        table.append(cells)
    refs = [
        ["forward over the pairs", *[f"{r['forward_s']:.2f} s" for r in rows], ""],
        ["forward of the LoRA model", *[f"{r['lora_forward_s']:.2f} s" for r in rows], ""],
        ["forward over the items", *[f"{r['query_forward_s']:.2f} s" for r in rows], ""],
    ]
    memory = [
        [
            r["dtype"],
            f"{r['model_mb']:.0f}",
            f"{r['ll_kron_fit_mib']:.0f}",
            f"{r['ll_diag_fit_mib']:.0f}",
            f"{r['ll_full_fit_mib']:.0f}",
            f"{r['lora_kron_fit_mib']:.0f}",
        ]
        for r in rows
    ]
    gpu = data["environment"]["device"].startswith("cuda")
    where = "CUDA allocations (`max_memory_allocated`)" if gpu else "resident memory (`VmHWM`)"
    config = ", ".join(f"{k}={v}" for k, v in setup["config"].items())
    return "\n".join(
        [
            "# Half-precision reward models: bf16 against float32",
            "",
            *environment_lines(data["environment"]),
            f"- Total run time: {data['elapsed']:.0f} s",
            "",
            f"A `LlamaForSequenceClassification` (one output) with random weights, preset "
            f"`{setup['preset']}` ({config}); {setup['pairs']} pairs of {setup['tokens']} "
            f"token ids in batches of {setup['batch']}. The same weights in float32 and cast "
            f"to {names[1]}; the model is never cast back: bt_laplace reads it in its dtype "
            "and sums the curvature in float32 (docs/guides/gotchas.md). LoRA: peft, r = 8 on "
            "`q_proj` and `v_proj` (float32 adapters, as peft keeps them), plus the score "
            f"head ({rows[0]['lora_params']:,} parameters). Times are the best of "
            f"{setup['repeats']} for forward passes and queries, one run for fits (default "
            "prior); in brackets the ratio to the forward pass over the same pairs (fits) or "
            "items (queries).",
            "",
            md_table(["", *names, f"{names[1]} / {names[0]}"], table),
            "",
            md_table(["reference", *names, ""], refs),
            "",
            f"## Memory of a fit against the model's size (MiB, peak {where} above the start)",
            "",
            md_table(
                [
                    "dtype",
                    "model",
                    "last layer kron",
                    "last layer diag",
                    "last layer full",
                    "LoRA kron",
                ],
                memory,
            ),  # fmt: skip
            "",
            "A last-layer posterior holds no copy of the network (laplace-torch's `LLLaplace` "
            "deep-copies it): what a fit adds is its state, one batch of activations and the "
            "transient buffers of its eigendecomposition. `python benchmarks/"
            "bench_half_precision.py --memory-only` measures that on a 224 MB bf16 Llama "
            "(hidden 1024) in a fresh process; tests/test_inplace.py runs it (slow).",
            "",
            "On a GPU: `python benchmarks/bench_half_precision.py --device cuda` (preset "
            "`qwen0.5b`: Qwen2.5-0.5B's widths and depth, 256 pairs of 256 tokens; a few "
            "minutes) writes the page `half_precision_gpu.md` beside this one.",
            "",
        ]
    )
