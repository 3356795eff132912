"""Speed on a GPT-2 reward model: a posterior over every linear (Conv1D) layer, against the
forward pass and laplace-torch.

Run from the repository root (needs the ``transformers`` extra; nothing is downloaded)::

    python benchmarks/bench_gpt2.py [--threads 1] [--pairs 96] [--length 64]

Saves ``docs/data/gpt2.json`` and writes ``docs/results/gpt2.md`` from it
(``benchmarks/report.py``).
The model is a randomly initialized ``GPT2ForSequenceClassification`` (4 layers, width 128,
vocabulary 1,000, about 0.93M parameters) with embeddings and LayerNorms frozen, so the
posterior covers its 16 ``Conv1D`` layers and the ``nn.Linear`` score head (0.79M
parameters). Each fit is timed against one forward pass over the same pairs (no gradients),
the cost a user of the reward model pays anyway. For comparison, in the same run:
bt_laplace's ``diag`` with the fast path switched off (laplace-torch's per-item Jacobians,
what a GPT-2 got before ``Conv1D`` was on the fast path) and laplace-torch 0.3's own ``diag``
and ``kron`` fits with its default backend.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, environment, page_name, save
from torch.utils.data import DataLoader

from bt_laplace import PairwiseRewardModel
from bt_laplace._layer_io import LayerIORecorder
from bt_laplace.curvature import BradleyTerryGGN
from bt_laplace.fit import fit_reward_posterior
from bt_laplace.testing import rel_err

warnings.filterwarnings("ignore")


class PerItemJacobians(BradleyTerryGGN):
    """bt_laplace's exact pair GGN with the fast path switched off: laplace-torch's per-item
    Jacobians for every batch (the route a GPT-2 took when only nn.Linear was on it)."""

    @property
    def layer_io(self) -> LayerIORecorder:
        recorder = super().layer_io
        recorder.supported, recorder.reason = False, "switched off for the benchmark"
        return recorder


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls of ``fn`` and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def gpt2_reward_model(args: argparse.Namespace) -> PairwiseRewardModel:
    """A random GPT-2 reward model, float32, with only its linear layers trainable."""
    import transformers as tf

    config = tf.GPT2Config(
        n_layer=args.layers,
        n_embd=args.width,
        n_head=args.heads,
        vocab_size=args.vocab,
        n_positions=args.length,
        num_labels=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    model = PairwiseRewardModel(tf.GPT2ForSequenceClassification(config)).eval()
    for name, p in model.named_parameters():
        if any(k in name for k in ("wte", "wpe", "ln_")):
            p.requires_grad_(False)
    return model


def pair_loader(args: argparse.Namespace, batch: int) -> DataLoader:
    """Random token pairs of ``length // 2`` to ``length`` tokens, right-padded, as dict rows
    (``input_ids``, ``attention_mask``, ``labels``): the batches both libraries read."""
    g = torch.Generator().manual_seed(1)
    n, length = args.pairs, args.length
    lengths = torch.randint(length // 2, length + 1, (n, 2), generator=g)
    mask = (torch.arange(length) < lengths[..., None]).long()
    ids = torch.randint(2, args.vocab, (n, 2, length), generator=g) * mask
    labels = torch.randint(0, 2, (n,), generator=g)
    rows = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]
    return DataLoader(rows, batch_size=batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--length", type=int, default=64, help="tokens per item (at most)")
    parser.add_argument("--batch", type=int, default=32, help="pairs per batch")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument(
        "--jacobian-batch",
        type=int,
        default=4,
        help="pairs per batch of the per-item Jacobian route (its memory grows with the "
        "square of the batch: 32 pairs ran out of a 24 GB machine)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--slow-paths",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the per-item Jacobian route and laplace-torch (about 5 min)",
    )
    parser.add_argument("--out", default=str(RESULTS / "gpt2.md"), help=OUT_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment(torch.get_num_threads())
    t_start = time.perf_counter()
    model = gpt2_reward_model(args)
    loader = pair_loader(args, args.batch)
    n_total = sum(p.numel() for p in model.parameters())
    n_post = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def forward() -> None:
        with torch.no_grad():
            for batch in loader:
                model(batch)

    def forward_backward() -> None:  # what one epoch of fine-tuning these layers costs
        for batch in loader:
            model(batch).sum().backward()
        model.zero_grad(set_to_none=True)

    forward()  # warm-up
    t_forward, _ = timed(forward, args.repeats)
    t_step, _ = timed(forward_backward, args.repeats)
    print(f"forward {t_forward:.3f} s, forward + backward {t_step:.3f} s", flush=True)

    def bt_fit(structure: str) -> Any:
        return fit_reward_posterior(
            model, loader, subset_of_weights="all", hessian_structure=structure, prior_precision=1.0
        )

    rows: list[dict[str, Any]] = []
    fitted: dict[str, Any] = {}
    for structure in ("diag", "kron"):
        seconds, post = timed(lambda s=structure: bt_fit(s), args.repeats)
        fitted[structure] = post
        items = {k: v.flatten(0, 1) for k, v in next(iter(loader)).items() if k != "labels"}
        query, _ = timed(lambda post=post, items=items: post(items), args.repeats)
        rows.append(
            {
                "method": f"bt_laplace {structure}",
                "fit_s": seconds,
                "fast_path": bool(post.laplace.backend.layer_io.supported),
                "query_s": query,
                "query_items": int(items["input_ids"].shape[0]),
            }
        )
        print(rows[-1], flush=True)

    if args.slow_paths:
        row: dict[str, Any] = {
            "method": "bt_laplace diag, per-item Jacobians",
            "batch": args.jacobian_batch,
        }
        small = pair_loader(args, args.jacobian_batch)
        try:
            t0 = time.perf_counter()
            post = fit_reward_posterior(
                model,
                small,
                subset_of_weights="all",
                hessian_structure="diag",
                prior_precision=1.0,
                backend=PerItemJacobians,
            )
            seconds = time.perf_counter() - t0
            row["fit_s"] = seconds
            row["rel_err_h"] = rel_err(post.laplace.H, fitted["diag"].laplace.H)
        except Exception as err:  # noqa: BLE001 -- the failure is the measurement
            row["error"] = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:100]}"
        rows.append(row)
        print(row, flush=True)

        from laplace import Laplace

        for structure in ("diag", "kron"):
            row = {"method": f"laplace-torch {structure}"}
            try:
                t0 = time.perf_counter()
                la = Laplace(
                    model, "reward_modeling", subset_of_weights="all", hessian_structure=structure
                )
                la.fit(loader)
                row["fit_s"] = time.perf_counter() - t0
                row["backend"] = type(la.backend).__name__
                if structure == "diag":
                    row["rel_err_h"] = rel_err(la.H, fitted["diag"].laplace.H)
            except Exception as err:  # noqa: BLE001 -- the failure is the measurement
                row["error"] = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:100]}"
            rows.append(row)
            print(row, flush=True)

    results = {
        "environment": env,
        "elapsed": time.perf_counter() - t_start,
        "args": {
            k: getattr(args, k)
            for k in (
                "pairs",
                "length",
                "batch",
                "jacobian_batch",
                "layers",
                "width",
                "heads",
                "vocab",
                "repeats",
            )
        },
        "parameters": n_total,
        "posterior_parameters": n_post,
        "forward_s": t_forward,
        "forward_backward_s": t_step,
        "rows": rows,
    }
    save(page_name(args.out), "gpt2", results)
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
