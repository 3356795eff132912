"""Shared helpers of the benchmark scripts (environment description, markdown tables)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata


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
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment_lines(command: str, threads: int) -> list[str]:
    import torch

    return [
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores visible, torch threads = {threads}; "
        f"{platform.system()} {platform.release()}",
        f"- Versions: Python {platform.python_version()}, torch {torch.__version__}, "
        f"laplace-torch {version('laplace-torch')}, "
        f"curvlinops {version('curvlinops-for-pytorch')}, "
        f"scikit-learn {version('scikit-learn')}, numpy {version('numpy')}, "
        f"bt_laplace {version('bt_laplace')} (git {git_commit()}, working tree)",
    ]


def command_line() -> str:
    return " ".join(["python", *[a if " " not in a else repr(a) for a in sys.argv]])


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


def bradley_terry_epoch(model, loader, opt) -> None:
    """One epoch of MAP training of a pair model: cross-entropy over the two logits of each
    pair (the Bradley-Terry loss), one optimizer step per batch."""
    from torch.nn.functional import cross_entropy

    for xb, yb in loader:
        opt.zero_grad()
        cross_entropy(model(xb), yb).backward()
        opt.step()
