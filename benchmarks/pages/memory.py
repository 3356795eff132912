"""docs/results/memory.md from docs/data/memory.json (benchmarks/bench_memory.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, md_table


def _name(r: dict[str, Any]) -> str:
    name = f"{r['subset']}/{r['structure']}"
    return name if r["store_limit"] is None else f"{name}, kron_store_limit={r['store_limit']}"


def _rest(r: dict[str, Any]) -> float:
    """Peak anonymous memory that is neither kept factors nor the posterior, MiB."""
    return float(r["fit_anon_mib"] - r["kept_mib"] - r["posterior_mib"])


def _fits(runs: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(_name(r) for r in runs))


def render(data: dict[str, Any], page: Path) -> str:
    runs, sizes = data["runs"], data["pairs"]
    at = {(_name(r), r["pairs"]): r for r in runs}
    fits = _fits(runs)
    peaks = [
        [f"`{f}`"] + [f"{at[f, n]['fit_mib']:.0f} MiB ({at[f, n]['fit_s']:.1f} s)" for n in sizes]
        for f in fits
    ]
    parts = [
        [
            f"`{f}`",
            f"{n:,}",
            f"{r['fit_mib']:.0f}",
            f"{r['fit_anon_mib']:.0f}",
            f"{r['kept_mib']:.0f}",
            f"{r['posterior_mib']:.1f}",
            f"{_rest(r):.0f}",
        ]
        for f in fits
        for n in sizes
        for r in [at[f, n]]
    ]
    queries = [
        [f"`{f}`", f"{r['query_mib']:.0f}", f"{r['query_s']:.1f} s"]
        for f in fits
        for r in [at.get((f, 10_000), {})]
        if "query_mib" in r
    ]
    last = [at["last_layer/kron", n] for n in sizes]
    allk = [at["all/kron", n] for n in sizes]
    stream = [at.get(("all/kron, kron_store_limit=0", n)) for n in sizes]
    big, small = sizes[-1], sizes[0]
    per_pair = allk[0]["kept_mib"] * 2**20 / small  # bytes a pair of the hidden layers
    limit = 2**30
    # the largest size whose default fit kept every pair (so made no recomputing pass)
    kept_all = [i for i, n in enumerate(sizes) if per_pair * n <= limit]
    grown = allk[-1]["kept_mib"] - allk[0]["kept_mib"]
    overhead = 100 * (_rest(allk[-1]) - _rest(allk[0])) / grown if grown else 0.0
    lines = [
        "# Peak memory against the number of pairs",
        "",
        *environment_lines(data["environment"]),
        f"- Total run time: {data['elapsed']:.0f} s",
        "",
        "MLP 64-256-256-1 (82,689 parameters; its head has 257), float32; pairs streamed from "
        "a seeded IterableDataset (no len; the data itself holds no memory), batches of 1,024; "
        "`evidence='posterior'`. Each point is a fresh process. Peak resident memory during "
        "the fit (`VmHWM`, reset at its start) above the resident memory at its start (after "
        "building the model and the first batch), in MiB; fit time in brackets (the machine "
        "was shared: the load average above says how much).",
        "",
        md_table(["fit", *[f"{n:,} pairs" for n in sizes]], peaks),
        "",
        "## What the memory is made of",
        "",
        "*Peak anon*: the peak of the anonymous memory (`RssAnon`, what the process "
        "allocated; sampled every millisecond) above that at the start; the resident peak "
        "also counts shared-library pages, which other processes can evict. *Kept*: the "
        "per-pair factors the kron fit kept at most (`kron_kept_bytes` of the backend). "
        "*Posterior*: the posterior's tensors (mean, curvature, its eigendecomposition). "
        "*Rest*: peak anon minus both: one batch's forward and backward, the prior "
        "optimization, the glibc heap and torch's allocator.",
        "",
        md_table(
            ["fit", "pairs", "peak MiB", "peak anon MiB", "kept MiB", "posterior MiB", "rest MiB"],
            parts,
        ),
        "",
        "- The Kronecker fit sums as the batches pass everything one pass gives: the exact "
        "block of a layer that is a Kronecker product already (one output: the head), the "
        "exact bias blocks and the first alternating half-step of the other layers. Only the "
        "later half-steps of layers with several outputs and inputs need the pairs again.",
        f"- `last_layer/kron` (the head, 257 parameters, a Kronecker product) keeps nothing "
        f"({last[-1]['kept_mib']:.0f} MiB at {big:,} pairs) and makes no pass over the pairs "
        f"beyond laplace-torch's own; its peak, {last[0]['fit_mib']:.0f} MiB at {small:,} "
        f"and {last[-1]['fit_mib']:.0f} MiB at {big:,} pairs, is one batch, the posterior "
        f"and the allocator. Its rest is not proportional to the pairs: {big // small:,} "
        f"times the pairs, {_rest(last[-1]) - _rest(last[0]):+.0f} MiB, where keeping the "
        f"head's inputs (2,056 bytes a pair) would add {2056 * (big - small) / 2**20:,.0f} MiB.",
        f"- `all/kron` keeps its two hidden layers' factors, 2 (in + out) numbers a pair and "
        f"layer plus the pair weight, {per_pair:,.0f} bytes a pair: "
        f"{allk[0]['kept_mib']:.0f} MiB at {small:,} pairs, up to `kron_store_limit` (1 GiB, "
        f"reached at about {round(limit / per_pair, -3):,.0f} pairs); past it the fit drops "
        f"them and recomputes them in one more pass over the pairs ({allk[-1]['kept_mib']:.0f} MiB "
        f"kept at most at {big:,}). The growth up to 1 GiB buys that pass. Its rest grows with "
        f"what it keeps, {_rest(allk[0]):.0f} to {_rest(allk[-1]):.0f} MiB: the allocator's "
        f"overhead on the kept tensors, {overhead:.0f}% of them.",
    ]
    if all(stream) and kept_all:
        i = kept_all[-1]
        s = stream
        lines.append(
            f"- With `kron_store_limit=0` it keeps nothing: {s[0]['fit_mib']:.0f} MiB at "
            f"{small:,} and {s[-1]['fit_mib']:.0f} MiB at {big:,} pairs, for one more pass "
            f"({s[i]['fit_s']:.1f} s against {allk[i]['fit_s']:.1f} s at {sizes[i]:,} pairs)."
        )
    before = data.get("before")
    if before:
        cells = ", ".join(
            f"{b['fit_mib']:.0f} MiB at {b['pairs']:,}" for b in before["last_layer_kron"]
        )
        lines += [
            "",
            f"Before commit {before['fixed_in']} the last-layer fit kept the head's inputs per "
            f"pair (2,056 bytes a pair) up to 1 GiB, then recomputed them: {cells} pairs "
            f"(git {before['git']}; {before['how']}).",
        ]
    if queries:
        lines += [
            "",
            "## Queries",
            "",
            "`post(x)` over 200,000 items (batch_size 4,096; the items made before the start), "
            "after the 10,000-pair fit:",
            "",
            md_table(["posterior", "peak MiB above the start", "time"], queries),
        ]
    return "\n".join(lines) + "\n"
