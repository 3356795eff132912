"""The benchmark pages: each ``docs/<name>.md`` is what its renderer makes of
``docs/data/<name>.json`` (so a page and its numbers never drift apart), and every benchmark
script starts (its ``--help``), so a change in the shared helpers cannot break one unseen."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
DATA = sorted((ROOT / "docs" / "data").glob("*.json"))
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest.mark.parametrize("path", DATA, ids=[p.stem for p in DATA])
def test_page_is_its_rendered_data(path, tmp_path, benchmarks_on_path):
    pytest.importorskip("matplotlib")
    benchmark = json.loads(path.read_text()).get("benchmark")
    if benchmark is None:  # rendered by its own script (bench_real_data, bench_active)
        pytest.skip(f"{path.name} is rendered by its benchmark script")
    from _common import load

    renderer = importlib.import_module(f"pages.{benchmark}")
    text = renderer.render(load(path.stem), tmp_path / f"{path.stem}.md")
    assert text == (ROOT / "docs" / f"{path.stem}.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_script_starts(script):
    out = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
