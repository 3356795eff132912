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


#: runs each benchmark script's ``--help`` in one interpreter (imports are shared: seconds, not
#: minutes) and prints the scripts whose ``--help`` did not exit 0 with a usage line
_STARTS = """
import contextlib, io, runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code or 0
    except BaseException as e:  # noqa: BLE001 - report any failure of a script
        code = repr(e)
    if code != 0 or "usage:" not in out.getvalue():
        failed.append((path, code))
print(failed)
"""


@pytest.mark.slow
def test_every_benchmark_script_starts():
    out = subprocess.run(
        [sys.executable, "-c", _STARTS, *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCHMARKS,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-2000:]
