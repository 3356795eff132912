"""Turn saved benchmark results into the pages and plots in ``docs/results/``.

Run from the repository root::

    python benchmarks/report.py                 # every docs/data/*.json
    python benchmarks/report.py accuracy prior  # docs/data/accuracy.json, docs/data/prior.json

Each ``docs/data/<name>.json`` names its renderer (``benchmarks/pages/<renderer>.py``), which
writes ``docs/results/<name>.md`` and its figures beside it. Nothing is measured here: a change
of wording or formatting only needs this step. Every benchmark script calls it at its end.
A results file that names no renderer (``real_data.json``) is rendered by
``benchmarks/pages/<name>.py``; ``active_learning.json`` has none (``bench_active.py --render``
writes its page).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, RESULTS, load  # noqa: E402

PAGES = Path(__file__).resolve().parent / "pages"


def renderer_name(name: str, data: dict) -> str | None:
    """The module in ``benchmarks/pages/`` that renders ``docs/data/<name>.json``: the one the
    file names, else the page's own (``real_data``), else None (the script renders it)."""
    if "benchmark" in data:
        return data["benchmark"]
    return name if (PAGES / f"{name}.py").is_file() else None


def write(name: str) -> None:
    """Render ``docs/data/<name>.json`` into ``docs/results/<name>.md`` (and its figures)."""
    data = load(name)
    benchmark = renderer_name(name, data)
    if benchmark is None:  # bench_active.py --render
        print(f"skipped docs/data/{name}.json: its benchmark script renders it", flush=True)
        return
    renderer = importlib.import_module(f"pages.{benchmark}")
    page = RESULTS / f"{name}.md"
    page.write_text(renderer.render(data, page))
    print(f"wrote {page}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="results in docs/data/ (default: all)")
    args = parser.parse_args()
    for name in args.names or sorted(p.stem for p in DATA.glob("*.json")):
        write(name)


if __name__ == "__main__":
    main()
