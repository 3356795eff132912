"""The benchmark pages: each ``docs/results/<name>.md`` is what its renderer makes of
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
    from _common import load
    from report import renderer_name

    benchmark = renderer_name(path.stem, json.loads(path.read_text()))
    if benchmark is None:  # rendered by its own script (bench_active)
        pytest.skip(f"{path.name} is rendered by its benchmark script")

    renderer = importlib.import_module(f"pages.{benchmark}")
    text = renderer.render(load(path.stem), tmp_path / f"{path.stem}.md")
    assert text == (ROOT / "docs" / "results" / f"{path.stem}.md").read_text()


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


def test_prior_sweep_exact_posterior_is_the_full_ggn_posterior(benchmarks_on_path):
    """The exact-Laplace reference of docs/results/prior_sweep.md (pair-kernel form, Woodbury)
    equals bt_laplace's all-weights ``full`` posterior (P x P covariance) in float64, for margins
    of new pairs and rewards of new items."""
    pytest.importorskip("matplotlib")
    torch = pytest.importorskip("torch")
    default_dtype = torch.get_default_dtype()
    try:  # realdata (imported by it) sets float64 as the default dtype, on import
        import bench_prior_sweep as sweep
    finally:
        torch.set_default_dtype(default_dtype)
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import bt_laplace as btl

    g = torch.Generator().manual_seed(0)
    dtype = torch.float64

    def pairs(n):
        x = torch.randn(n, 2, 3, generator=g, dtype=dtype)
        return x, torch.randint(0, 2, (n,), generator=g), None

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).to(dtype)
    model = btl.PairwiseRewardModel(net)
    split = {
        "train": pairs(40),
        "val": pairs(7),
        "test": pairs(9),
        "score_in": torch.randn(4, 3, generator=g, dtype=dtype),
        "score_out": 3 * torch.randn(5, 3, generator=g, dtype=dtype),
    }
    exact = sweep.ExactLaplace(model, split)
    loader = DataLoader(TensorDataset(*split["train"][:2]), batch_size=16)
    for delta in (0.05, 3.0):
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights="all", hessian_structure="full",
            prior_precision=delta,
        )  # fmt: skip
        var = exact.variances(delta)
        for what in ("val", "test"):
            _, ref = post.predictive.difference_moments(split[what][0])
            torch.testing.assert_close(var[what], ref.reshape(-1), rtol=1e-9, atol=1e-12)
        items = torch.cat([split["score_in"], split["score_out"]])
        ref = post(items).variance.reshape(-1)
        torch.testing.assert_close(var["score"], ref, rtol=1e-9, atol=1e-12)
