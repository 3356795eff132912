"""Save and load: bit-identical predictions in a new process for every structure and subset,
no code executed on load, a model that differs is refused, the posterior pickles."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import make_net
from safetensors.torch import load_file, save_file

import bt_laplace as btl
from bt_laplace.io import CONFIG_FILE, TENSORS_FILE

CASES = [(s, h) for s in ("all", "last_layer") for h in ("diag", "kron", "full")]
IDS = [f"{s}-{h}" for s, h in CASES]


def _model() -> btl.PairwiseRewardModel:
    return btl.PairwiseRewardModel(make_net()).eval()


def _queries() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "items": torch.randn(7, 5, generator=g, dtype=torch.float64),
        "pairs": torch.randn(6, 2, 5, generator=g, dtype=torch.float64),
    }


def _answers(post, q: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mean, var = post(q["items"])
    m2, v2, c2 = post.pair_moments(q["pairs"])
    rel = post.relative_reward(q["items"])
    samples = post.sample(q["items"], 50, generator=torch.Generator().manual_seed(3))
    return {
        "mean": mean,
        "variance": var,
        "pair_mean": m2,
        "pair_var": v2,
        "pair_cov": c2,
        "prob": post.preference_probability(q["pairs"]),
        "rel_var": rel.variance,
        "samples": samples,
        "marglik": post.log_marginal_likelihood().reshape(1),
    }


def _fit(subset, hessian, pair_loader, **kw):
    return btl.fit_reward_posterior(
        _model(), pair_loader, subset_of_weights=subset, hessian_structure=hessian, **kw
    )


def test_every_structure_loads_bit_identically_in_a_new_process(pair_loader, tmp_path):
    expected = {}
    for subset, hessian in CASES:
        post = _fit(subset, hessian, pair_loader)
        post.save(tmp_path / f"{subset}-{hessian}")
        expected[f"{subset}-{hessian}"] = _answers(post, _queries())
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from safetensors.torch import save_file
        import bt_laplace as btl
        from test_io import _answers, _model, _queries, CASES
        out = {{}}
        for subset, hessian in CASES:
            name = f"{{subset}}-{{hessian}}"
            post = btl.load_reward_posterior({str(tmp_path)!r} + "/" + name, _model())
            for k, v in _answers(post, _queries()).items():
                out[name + "." + k] = v.contiguous()
        save_file(out, {str(tmp_path / "answers.safetensors")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    got = load_file(str(tmp_path / "answers.safetensors"))
    for name, answers in expected.items():
        for k, v in answers.items():
            assert torch.equal(got[f"{name}.{k}"], v), f"{name}: {k} differs after loading"


@pytest.mark.parametrize(("subset", "hessian"), CASES, ids=IDS)
def test_pickle_round_trip_is_bit_identical(pair_loader, subset, hessian):
    post = _fit(subset, hessian, pair_loader)
    again = pickle.loads(pickle.dumps(post))
    for k, v in _answers(post, _queries()).items():
        assert torch.equal(_answers(again, _queries())[k], v), k


@pytest.mark.parametrize(
    ("subset", "hessian", "prior_structure"),
    [("all", "diag", "layerwise"), ("all", "kron", "layerwise"), ("last_layer", "full", "diag")],
)
def test_vector_priors_and_temperature_round_trip(
    pair_loader, tmp_path, subset, hessian, prior_structure
):
    post = _fit(subset, hessian, pair_loader, prior_structure=prior_structure, temperature=0.5)
    post.save(tmp_path)
    again = btl.load_reward_posterior(tmp_path, _model())
    assert torch.equal(again.prior_precision, post.prior_precision)
    assert again.prior_precision.numel() > 1 and again.laplace.temperature == 0.5
    x = _queries()["items"]
    assert torch.equal(again(x).variance, post(x).variance)


def test_saved_files_are_safetensors_and_json_and_load_runs_no_unpickling(
    pair_loader, tmp_path, monkeypatch
):
    post = _fit("all", "kron", pair_loader)
    (tmp_path / "config.json").write_text("{}")  # e.g. save_pretrained's files beside it
    post.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", CONFIG_FILE, TENSORS_FILE]
    )
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["hessian_structure"] == "kron" and config["subset_of_weights"] == "all"
    assert [n for n, _ in config["parameters"]][:2] == ["net.0.weight", "net.0.bias"]
    assert len(config["fingerprint"]) == 64

    def refuse(*args, **kwargs):
        raise AssertionError("loading must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    btl.load_reward_posterior(tmp_path, _model())


def test_a_model_that_differs_is_refused_with_what_differs(pair_loader, tmp_path):
    _fit("all", "diag", pair_loader).save(tmp_path)
    changed = _model()
    with torch.no_grad():
        changed.net[0].weight[0, 0] += 1e-6
    with pytest.raises(ValueError, match=r"weights differ .*fingerprint.*strict=False"):
        btl.load_reward_posterior(tmp_path, changed)
    btl.load_reward_posterior(tmp_path, changed, strict=False)  # explicit override
    other = btl.PairwiseRewardModel(make_net(hidden=6)).eval()
    with pytest.raises(ValueError, match=r"\['net.0.weight', \[7, 5\]\] saved, .*\[6, 5\]"):
        btl.load_reward_posterior(tmp_path, other, strict=False)
    with pytest.raises(TypeError, match="must be the bt_laplace.PairwiseRewardModel"):
        btl.load_reward_posterior(tmp_path, make_net())


def test_missing_or_foreign_files_are_refused(pair_loader, tmp_path):
    with pytest.raises(FileNotFoundError, match="written by RewardPosterior.save"):
        btl.load_reward_posterior(tmp_path, _model())
    post = _fit("all", "diag", pair_loader)
    post.save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["format"] = "something/9"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format 'something/9'"):
        btl.load_reward_posterior(tmp_path, _model())
    file = tmp_path / "a_file"
    file.write_text("")
    with pytest.raises(ValueError, match="`path` must be a folder"):
        post.save(file)
    save_file({"x": torch.zeros(1)}, str(tmp_path / TENSORS_FILE))


def test_backend_named_in_the_file_is_looked_up_not_imported(pair_loader, tmp_path):
    _fit("all", "diag", pair_loader).save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["backend"] = "os.system"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="backend 'os.system', which is neither"):
        btl.load_reward_posterior(tmp_path, _model())
