"""docs/results/saved_size.md from docs/data/saved_size.json (bench_saved_size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, md_table


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def render(data: dict[str, Any], page: Path) -> str:
    rows = []
    for name, r in data["rows"].items():
        files = ", ".join(f"`{f}` {_size(n)}" for f, n in r["files"].items())
        rows.append(
            [
                name,
                f"{r['n_params']:,}",
                files,
                _size(r["total"]),
                f"{r['save_s'] * 1000:.1f}",
                f"{r['load_s'] * 1000:.1f}",
                "yes" if r["bit_identical"] else "NO",
            ]
        )
    header = [
        "posterior",
        "parameters",
        "files",
        "total",
        "save ms",
        "load ms",
        "loaded predictions bit-identical",
    ]
    setup = data["setup"]
    parts = [
        "# What a saved posterior is made of",
        "",
        *environment_lines(data["environment"]),
        f"- Total run time: {data['elapsed']:.0f} s",
        "",
        "`post.save(folder)` writes two files: `bt_posterior.safetensors` (the tensors: curvature "
        "factors or diagonal, eigendecompositions for kron, prior precision and mean, the MAP "
        "parameters it covers, the loss) and `bt_posterior.json` (structure, subset, backend, "
        "temperature, number of pairs, the names and shapes of the covered parameters, a SHA-256 "
        "fingerprint of the model's weights, and how texts were tokenized). The model itself is "
        "not in them: for a Hugging Face model `save_pretrained` writes it, into the same folder "
        "if you like. `load_reward_posterior(folder, model)` reads them back without unpickling "
        "anything.",
        "",
        f"MLP: fitted on {setup['pairs']:,} random pairs; MiniLM head: {setup['text_pairs']} "
        "text pairs through the whole model (prior precision 1). Load time includes building "
        "laplace-torch's object on the model and checking the fingerprint (hashing the "
        "model's weights: 22.7M parameters for MiniLM).",
        "",
        md_table(header, rows),
        "",
    ]
    return "\n".join(parts)
