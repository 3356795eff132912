"""docs/results/scale.md from docs/data/scale.json (bench_scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, fmt_s, fmt_x, md_table

VOCAB = 256  # the measured models' vocabulary (bench_lora_scale.VOCAB)


def _mb(x: float) -> str:
    return f"{x:,.1f} MB" if x < 100 else f"{x:,.0f} MB"


def _times(layers: int, one: float, unit: str) -> tuple[str, float]:
    """``layers x one = total`` as text, and the total."""
    total = layers * one
    shown = fmt_s(total) if unit == "s" else _mb(total)
    return f"{layers} x {one:,.1f} = **{shown}**", total


def _step(r: dict[str, Any]) -> float:
    """The training step: the mean of the one before the fits and the one after them."""
    return (r["step_s"] + r["step_after_s"]) / 2


def _measured(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, r in data["rows"].items():
        shape, layers = key.split(":")
        lora, ll = r["lora"], r["last_layer"]
        step = _step(r)
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


#: what each whole-model cell multiplies, per layer
QUANTITIES = {
    "lora_saved": (lambda r: r["lora"]["saved_mb"], "MB"),
    "lora_growth": (lambda r: r["lora"]["growth_mb"], "MB"),
    "lora_fit": (lambda r: r["lora"]["fit_s"], "s"),
    "step": (_step, "s"),
    "ll_fit": (lambda r: r["last_layer"]["fit_s"], "s"),
    "forward": (lambda r: r["forward_s"], "s"),
}


def _whole(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for shape, whole in data["setup"]["whole"].items():
        one = data["rows"].get(f"{shape}:1")
        if one is None:
            continue
        n, hidden = whole["layers"], data["setup"]["shapes"][shape][0]
        base = one["params"] - one["trainable"] - VOCAB * hidden  # one layer, norm, head
        params = n * base + whole["vocab"] * hidden
        cell = {k: _times(n, get(one), unit) for k, (get, unit) in QUANTITIES.items()}
        fit, step = cell["lora_fit"], cell["step"]
        ll, fwd = cell["ll_fit"], cell["forward"]
        rows.append(
            [
                f"{whole['name']} ({n} layers)",
                f"{params / 1e9:.2f}B ({params * 2 / 2**30:,.1f} GiB in bf16)",
                f"{n * one['trainable'] / 1e6:.1f}M",
                cell["lora_saved"][0],
                _growth(n, one),
                f"{fit[0]} / {step[0]} = **{fmt_x(fit[1] / step[1])}**",
                _mb(one["last_layer"]["saved_mb"]),
                f"{ll[0]} / {fwd[0]} = **{fmt_x(ll[1] / fwd[1])}**",
            ]
        )
    return rows


def _growth_estimate(n: int, one: dict[str, Any]) -> tuple[float, float, float, float]:
    """A LoRA fit's growth for ``n`` layers from the one-layer run: its state per layer, the
    transients of one layer, the estimate (every layer's state and one layer's transients)
    and the most (``n`` times the one-layer growth), MB."""
    state, growth = one["lora"]["saved_mb"], one["lora"]["growth_mb"]
    transient = max(growth - state, 0.0)
    return state, transient, n * state + transient, n * growth


def _growth(n: int, one: dict[str, Any]) -> str:
    state, transient, low, most = _growth_estimate(n, one)
    growth = one["lora"]["growth_mb"]
    return (
        f"{n} x {state:,.1f} + {transient:,.1f} = **{_mb(low)}** to "
        f"{n} x {growth:,.1f} = **{_mb(most)}**"
    )


def _additivity(data: dict[str, Any]) -> list[list[str]]:
    """Two layers against one, per quantity (2.0 where the cost per layer adds up)."""
    rows = []
    for shape in data["setup"]["whole"]:
        one, two = data["rows"].get(f"{shape}:1"), data["rows"].get(f"{shape}:2")
        if one is None or two is None:
            continue
        *_, low, most = _growth_estimate(2, one)
        rows.append(
            [f"`{shape}`"]
            + [f"{get(two) / get(one):.2f}" for get, _ in QUANTITIES.values()]
            + [f"{two['trainable'] / one['trainable']:.2f}"]
            + [f"{_mb(low)} to {_mb(most)} / {_mb(two['lora']['growth_mb'])}"]
        )
    return rows


def _earlier(data: dict[str, Any]) -> list[str]:
    """The runs whose rows a later ``--merge`` run kept (the rows it ran replace theirs)."""
    lines = []
    for env in data.get("earlier", []):
        lines += [
            f"Rows kept from an earlier run ({', '.join(env['rows'])} as it measured them, "
            "unless run again above):",
            "",
            *environment_lines(env),
            "",
        ]
    return lines


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
    additivity = md_table(
        [
            "shape",
            "LoRA saved",
            "LoRA growth",
            "LoRA fit",
            "training step",
            "last-layer fit",
            "forward",
            "LoRA parameters",
            "LoRA growth, two layers: estimate to most / measured",
        ],
        _additivity(data),
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
            *_earlier(data),
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
            "A model of `L` layers costs `L` times one layer (shown as `L x one = total`): "
            "the rest of the measured model (a 256-token embedding, a norm, the score head) "
            "is negligible beside a layer, and a real vocabulary's embedding is a lookup that "
            "no posterior covers (counted in the parameters, not in the times). The two-layer "
            "runs check that the cost per layer adds up: two layers against one, per "
            "quantity (2.00 where it adds up exactly; the times move by tens of percent on "
            "this shared machine):",
            "",
            additivity,
            "",
            "The LoRA fit's ratio is to a LoRA training step (forward and backward "
            "over the same 16 pairs) of the same model; the last-layer fit's to the forward "
            "pass. A last-layer posterior's state does not grow with depth (the head's "
            "factors only). The LoRA fit's growth is estimated as every layer's state (its "
            "saved size) plus the transient buffers of one layer (the one-layer growth minus "
            "its state), with `L` times the one-layer growth (every transient held at once) "
            "as the most it could be; the two-layer runs above compare both with a "
            "measurement (the one-layer growth also holds the one-off allocations of a "
            "process's first fit, so a measurement can fall below the estimate). On a GPU "
            "in bf16 the forward and backward passes are far faster than on this CPU, and "
            "the fit's dense linear algebra (sketches, eigendecompositions of at most "
            "2048-wide factors) runs there too.",
            "",
            whole,
            "",
        ]
    )
