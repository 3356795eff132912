"""docs/results/heldout.md from docs/data/heldout.json (bench_heldout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def render(data: dict[str, Any], page: Path) -> str:
    return "# placeholder\n"
