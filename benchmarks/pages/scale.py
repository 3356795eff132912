"""docs/results/scale.md from docs/data/scale.json (bench_scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, fmt_s, fmt_x, md_table

VOCAB = 256  # the measured models' vocabulary (bench_lora_scale.VOCAB)


def _mb(x: float) -> str:
    return f"{x:,.1f} MB" if x < 100 else f"{x:,.0f} MB"


def _grow(one: float, step: float, layers: int, unit: str) -> tuple[str, float]:
    """``one + (layers - 1) * step = total`` as text, and the total."""
    total = one + (layers - 1) * step
    if unit == "s":
        return f"{one:.1f} + {layers - 1} x {step:.1f} = **{fmt_s(total)}**", total
    return f"{one:,.1f} + {layers - 1} x {step:,.1f} = **{_mb(total)}**", total


def _measured(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, r in data["rows"].items():
        shape, layers = key.split(":")
        lora, ll = r["lora"], r["last_layer"]
        step = (r["step_s"] + r["step_after_s"]) / 2
        rows.append(
            [
                f"`{shape}`",
                layers,
                _mb(r["model_mb"]),
                fmt_s(r["forward_s"]),
                f"{fmt_s(r['step_s'])} / {fmt_s(r['step_after_s'])}",
                f"{fmt_s(lora['fit_s'])} ({fmt_x(lora['fit_s'] / step)} step)",
                _mb(lora["growth_mb"]),
                _mb(lora["saved_mb"]),
                f"{fmt_s(ll['fit_s'])} ({fmt_x(ll['fit_s'] / r['forward_s'])} forward)",
                _mb(ll["growth_mb"]),
                _mb(ll["saved_mb"]),
                f"{lora['load']:.1f}",
            ]
        )
    return rows


def _whole(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    shapes = list(dict.fromkeys(k.split(":")[0] for k in data["rows"]))
    for shape in shapes:
        one, two = data["rows"].get(f"{shape}:1"), data["rows"].get(f"{shape}:2")
        if one is None or two is None:
            continue
        whole = data["setup"]["whole"][shape]
        n_layers, hidden = whole["layers"], data["setup"]["shapes"][shape][0]
        base_layer = (two["params"] - two["trainable"]) - (one["params"] - one["trainable"])
        base = one["params"] - one["trainable"] - VOCAB * hidden
        params = base + (n_layers - 1) * base_layer + whole["vocab"] * hidden
        lora_params = one["trainable"] + (n_layers - 1) * (two["trainable"] - one["trainable"])

        def per_layer(
            get: Any, unit: str, *, one: Any = one, two: Any = two, n_layers: int = n_layers
        ) -> Any:
            return _grow(get(one), get(two) - get(one), n_layers, unit)

        step_txt, step = per_layer(lambda r: (r["step_s"] + r["step_after_s"]) / 2, "s")
        fit_txt, fit = per_layer(lambda r: r["lora"]["fit_s"], "s")
        fwd_txt, fwd = per_layer(lambda r: r["forward_s"], "s")
        ll_txt, ll = per_layer(lambda r: r["last_layer"]["fit_s"], "s")
        rows.append(
            [
                f"{whole['name']} ({n_layers} layers)",
                f"{params / 1e9:.2f}B ({params * 2 / 2**30:,.1f} GiB in bf16)",
                f"{lora_params / 1e6:.1f}M",
                per_layer(lambda r: r["lora"]["saved_mb"], "MB")[0],
                per_layer(lambda r: r["lora"]["growth_mb"], "MB")[0],
                f"{fit_txt} / {step_txt} = **{fmt_x(fit / step)}**",
                _mb(one["last_layer"]["saved_mb"]),
                f"{ll_txt} / {fwd_txt} = **{fmt_x(ll / fwd)}**",
            ]
        )
    return rows


def render(data: dict[str, Any], page: Path) -> str:
    setup = data["setup"]
    dims = ", ".join(
        f"`{s}` hidden {h}, intermediate {i}, {a} heads, {kv} KV heads"
        for s, (h, i, a, kv) in setup["shapes"].items()
    )
    measured = md_table(
        [
            "shape",
            "layers",
            "weights (float32)",
            "forward",
            "LoRA step (before / after)",
            "LoRA kron fit",
            "LoRA fit: growth",
            "LoRA: saved",
            "last-layer fit",
            "last layer: growth",
            "last layer: saved",
            "1-min load",
        ],
        _measured(data),
    )
    whole = md_table(
        [
            "model",
            "parameters (real vocabulary)",
            "LoRA parameters",
            "LoRA posterior: saved (MB)",
            "LoRA fit: growth (MB)",
            "LoRA fit / training step (s)",
            "last layer: saved",
            "last-layer fit / forward (s)",
        ],
        _whole(data),
    )
    return "\n".join(
        [
            "# Posteriors at LLM scale: per layer, and whole models by arithmetic",
            "",
            *environment_lines(data["environment"]),
            "",
            f"Shapes: {dims}. Each model is a `LlamaForSequenceClassification` with that "
            "shape's widths and one or two decoder layers, a 256-token vocabulary, random "
            "weights, float32 on the CPU (Qwen's q, k, v biases are not modelled), base "
            "frozen, peft LoRA r = 16 on q, k, v, o, gate, up and down (both adapter matrices "
            f"random, as after training) plus the score head; {setup['pairs']} pairs of "
            f"{setup['length']} tokens in batches of 8, each model in a fresh process. LoRA "
            'posterior: `fit_reward_posterior(model, loader, subset_of_weights="all", '
            'hessian_structure="kron")`; last layer: `subset_of_weights="last_layer"` (the '
            "score head); both with the default prior (marglik on the exact evidence, "
            "calibrated). Growth is the peak resident memory during the fit above that at its "
            "start (the model loaded). Kronecker factors wider than 2048 keep their top 128 "
            "eigenpairs (docs/results/lora_scale.md).",
            "",
            "## Measured",
            "",
            measured,
            "",
            "## Whole models, extrapolated",
            "",
            "One more layer costs the two-layer value minus the one-layer value; a model of "
            "`L` layers is the one-layer value plus `L - 1` more layers (shown as "
            "`one + (L - 1) x more = total`). Parameters count the real vocabulary's "
            "embedding (a lookup: no posterior covers it, and it adds nothing measurable to "
            "the times). The LoRA fit's ratio is to a LoRA training step (forward and backward "
            "over the same 16 pairs) of the same model; the last-layer fit's to the forward "
            "pass. Growth adds each layer's Kronecker factors and sketches; the transient "
            "buffers of one layer's eigendecomposition do not add up across layers, so the "
            "extrapolated growth is an upper estimate. On a GPU in bf16 the forward and "
            "backward passes are far faster than on this CPU, and the fit's dense linear "
            "algebra (sketches, eigendecompositions of at most 2048-wide factors) runs "
            "there too.",
            "",
            whole,
            "",
        ]
    )
