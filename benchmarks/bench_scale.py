"""Last-layer and LoRA posteriors at real LLM widths, per decoder layer, extrapolated to whole
models.

Run from the repository root (needs transformers and peft; random weights, nothing
downloaded)::

    python benchmarks/bench_scale.py [--shapes qwen2.5-0.5b,qwen2.5-7b,llama3-8b] [--threads 2]

Saves ``docs/data/scale.json`` and writes ``docs/results/scale.md`` from it
(``benchmarks/report.py``). For each shape the model of ``bench_lora_scale.build`` (a
``LlamaForSequenceClassification`` of that shape's widths with a 256-token vocabulary, random
weights, float32 on the CPU, base frozen, peft LoRA r = 16 on q, k, v, o, gate, up and down
plus the score head; 16 pairs of 32 tokens in batches of 8) is built with one decoder layer
(and the shapes of ``--two-layers`` also with two, to check that the cost per
layer adds up), each in a fresh process, which measures in turn:

* the forward pass over the 16 pairs (no gradient; the best of ``--repeats`` after a
  warm-up) and a LoRA training step (forward and backward of the summed Bradley-Terry loss,
  after a warm-up one);
* the LoRA posterior, ``fit_reward_posterior(model, loader, subset_of_weights="all",
  hessian_structure="kron")`` with the default prior: its time, the growth of the process's
  peak resident memory during it, and its saved files;
* the last-layer posterior of the same model, ``subset_of_weights="last_layer"`` (the score
  head; its default structure and prior): the same three;
* another training step (the load of a shared machine drifts).

A whole model of ``L`` layers costs ``L`` times one layer: the rest of the measured model (a
256-token embedding, a norm, the score head) is negligible beside a layer, a real vocabulary's
embedding is a lookup that no posterior covers, and the two-layer runs check that the cost
per layer adds up. The page shows that arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import report
from _common import (
    DATA,
    OUT_HELP,
    RESULTS,
    environment,
    load,
    page_name,
    reset_peak,
    save,
    status_kib,
)
from bench_lora_scale import SHAPES, build, train_step

#: decoder layers and vocabulary of the whole models the per-layer costs are extrapolated to
WHOLE = {
    "qwen2.5-0.5b": {"layers": 24, "vocab": 151936, "name": "Qwen2.5-0.5B"},
    "qwen2.5-7b": {"layers": 28, "vocab": 152064, "name": "Qwen2.5-7B"},
    "llama3-8b": {"layers": 32, "vocab": 128256, "name": "Llama-3-8B"},
}


def _saved_bytes(post: Any) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = post.save(Path(tmp) / "post")
        return sum(p.stat().st_size for p in folder.iterdir())


def _measured_fit(model: Any, batches: list[Any], **kw: Any) -> dict[str, Any]:
    import bt_laplace as btl

    rss0 = reset_peak()
    t = time.perf_counter()
    post = btl.fit_reward_posterior(model, batches, **kw)
    out = {
        "fit_s": time.perf_counter() - t,
        "growth_mb": (status_kib("VmHWM") - rss0) / 1024,
        "load": os.getloadavg()[0],
    }
    out["saved_mb"] = _saved_bytes(post) / 2**20
    out["params"] = int(post.laplace.n_params)
    out["class"] = type(post.laplace).__name__
    return out


def child(shape: str, layers: int, threads: int, repeats: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    model, batches = build(shape, layers)
    out: dict[str, Any] = {
        "model_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }

    def forward() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for x, _ in batches:
                model(x)
        return time.perf_counter() - t

    # the best of the repeats after a warm-up (the machine is shared: the least loaded)
    forward()
    out["forward_s"] = min(forward() for _ in range(repeats))
    train_step(model, batches)
    out["step_s"] = train_step(model, batches)
    out["lora"] = _measured_fit(model, batches, subset_of_weights="all", hessian_structure="kron")
    out["last_layer"] = _measured_fit(model, batches, subset_of_weights="last_layer")
    out["step_after_s"] = train_step(model, batches)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-7b,llama3-8b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="forward passes timed (best)")
    parser.add_argument(
        "--two-layers",
        default="qwen2.5-0.5b",
        help="shapes also measured with two decoder layers (comma-separated; the check that "
        "the cost per layer adds up)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the saved rows of shapes not run now"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "scale.md"), help=OUT_HELP)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.child is not None:
        shape, layers = args.child.split(":")
        print(json.dumps(child(shape, int(layers), args.threads, args.repeats)), flush=True)
        return
    env = environment(args.threads)
    name = page_name(args.out)
    rows: dict[str, Any] = {}
    earlier: list[dict[str, Any]] = []
    if args.merge and (DATA / f"{name}.json").is_file():
        saved = load(name)
        rows = saved["rows"]
        earlier = [*saved.get("earlier", []), {**saved["environment"], "rows": list(rows)}]
    for shape in args.shapes.split(","):
        if shape not in WHOLE:
            parser.error(f"--shapes: {shape!r} is not one of {sorted(WHOLE)}")
        for layers in (1, 2) if shape in args.two_layers.split(",") else (1,):
            cmd = [sys.executable, __file__, "--threads", str(args.threads)]
            cmd += ["--repeats", str(args.repeats)]
            done = subprocess.run(
                [*cmd, "--child", f"{shape}:{layers}"], capture_output=True, text=True, check=True
            )
            rows[f"{shape}:{layers}"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(shape, layers, rows[f"{shape}:{layers}"], flush=True)
    setup = {"shapes": {s: SHAPES[s] for s in WHOLE}, "whole": WHOLE, "pairs": 16, "length": 32}
    save(name, "scale", {"environment": env, "setup": setup, "rows": rows, "earlier": earlier})
    report.write(name)


if __name__ == "__main__":
    main()
