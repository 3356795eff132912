"""bt_laplace's LoRA posterior side by side with ``bayesian-lora`` 0.0.6 (Laplace-LoRA's library).

Run from the repository root (needs transformers and peft; ``bayesian-lora`` is not a
dependency: install it apart, without its dependencies, and put it on the path)::

    pip install --no-deps --target /tmp/blora bayesian-lora==0.0.6 jaxtyping wadler_lindig
    PYTHONPATH=/tmp/blora python benchmarks/bench_bayesian_lora.py [--seeds 0,1,2]

Without ``bayesian_lora`` importable it says so and exits. Saves
``docs/data/bayesian_lora.json`` and writes ``docs/results/bayesian_lora.md`` from it
(``benchmarks/report.py``). The model and pairs are those of ``bench_lora_accuracy.py``
(one-layer Llama, hidden 128, LoRA r = 4 on all seven projections, float64), with the score
head frozen: ``bayesian-lora`` covers modules named ``lora`` only, so every posterior here is
over the adapters alone. Reference: the exact Laplace posterior over them at prior precision
1 (``Sigma = (H + I)^-1``, ``H`` the exact Bradley-Terry GGN). Compared: bt_laplace's kron
(whole factors, and forced low rank k = 8, the width kept whole 16) at prior precision 1, and
``bayesian-lora``'s ``calculate_kronecker_factors`` + ``cholesky_decompose_small_factors`` +
``variance`` with ``n_kfac = 8``, ``lr_threshold = 16``, prior variance ``s2 = 1``.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
import warnings
from typing import Any

import report
import torch
from _common import OUT_HELP, RESULTS, environment, page_name, save
from bench_lora_accuracy import LENGTH, QUERIES, build, exact_variances, spearman, tokens

import bt_laplace as btl

N_KFAC, THRESHOLD = 8, 16


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def bayesian_lora_variances(
    blora: Any, model: Any, loader: list[Any], queries: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, float, int]:
    """Its variances of the queries' rewards, the seconds its factors took, their bytes.

    Its likelihood: a categorical over the forward call's logits with labels sampled from the
    model (a Monte Carlo Fisher), mean over each batch, factors from the last position of each
    LoRA layer's input and output gradient, items treated as independent samples. The pair's
    two logits ``(B, 2)`` make that categorical the Bradley-Terry likelihood.
    """
    net = model.net
    net.train = lambda mode=True: net  # type: ignore[method-assign] # keeps eval (no dropout)

    def forward_call(_: Any, batch: Any) -> torch.Tensor:
        return model(batch[0])

    t = time.perf_counter()
    factors = blora.calculate_kronecker_factors(
        net, forward_call, loader, n_kfac=N_KFAC, lr_threshold=THRESHOLD,
        target_module_keywords=["lora"],
    )  # fmt: skip
    factors = blora.cholesky_decompose_small_factors(factors, THRESHOLD, "cpu", torch.float64)
    seconds = time.perf_counter() - t
    size = _bytes(t for pair in factors.values() for t in pair)
    from bayesian_lora.main import jacobian_mean  # not in its __all__

    def two_logits(out: Any) -> torch.Tensor:  # its variance() squeezes away a single logit
        return torch.cat([out.logits, torch.zeros_like(out.logits)], 1)

    jac, _ = jacobian_mean(net, queries, output_callback=two_logits)
    inputs = types.SimpleNamespace(input_ids=queries["input_ids"])
    var = blora.variance(
        inputs, jac, factors, torch.tensor(1.0, dtype=torch.float64), 2, 4, N_KFAC, "cpu"
    )
    return var[:, 0, 0].double(), seconds, size


def run_seed(blora: Any, seed: int, n_pairs: int) -> dict[str, Any]:
    model = build(seed)
    for name, p in model.named_parameters():
        if "lora" not in name:
            p.requires_grad_(False)
    g = torch.Generator().manual_seed(100 + seed)
    x = tokens(n_pairs, g, (2, LENGTH))
    with torch.no_grad():
        f = model(x)
    y = torch.bernoulli(torch.sigmoid(f[:, 1] - f[:, 0]), generator=g).long()
    loader = [
        ({k: v[i : i + 16] for k, v in x.items()}, y[i : i + 16]) for i in range(0, n_pairs, 16)
    ]
    queries = tokens(QUERIES, g, (LENGTH,))
    exact = exact_variances(model, x, queries, 1.0)
    rows: dict[str, Any] = {}
    for label, kwargs in (
        ("bt_laplace kron, whole factors", {}),
        (f"bt_laplace kron, low rank k = {N_KFAC}", {"kron_rank": N_KFAC, "kron_full_width": 16}),
    ):
        t = time.perf_counter()
        post = btl.fit_reward_posterior(
            model, loader, subset_of_weights="all", hessian_structure="kron",
            prior_precision=1.0, backend_kwargs=kwargs,
        )  # fmt: skip
        seconds = time.perf_counter() - t
        _, tensors = post.state()
        size = _bytes(v for k, v in tensors.items() if k.startswith(("curvature.", "eig.")))
        v = post(queries).variance.double()
        rows[label] = {"v": v, "fit_s": seconds, "bytes": size}
    torch.manual_seed(seed)  # its sampled labels
    v, seconds, size = bayesian_lora_variances(blora, model, loader, queries)
    rows[f"bayesian-lora 0.0.6, n_kfac = {N_KFAC}"] = {"v": v, "fit_s": seconds, "bytes": size}
    out = {}
    for label, r in rows.items():
        ratio = (r["v"] / exact).log().abs()
        out[label] = {
            "spearman": spearman(r["v"], exact),
            "median_abs_log_ratio": float(ratio.median()),
            "median_ratio": float((r["v"] / exact).median()),
            "fit_s": r["fit_s"],
            "bytes": r["bytes"],
        }
        print(seed, label, out[label], flush=True)
    return {"rows": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "bayesian_lora.md"), help=OUT_HELP)
    args = parser.parse_args()
    try:
        import bayesian_lora as blora
    except ImportError:
        print(
            "bayesian_lora is not importable: pip install --no-deps --target DIR "
            "bayesian-lora==0.0.6 and run with PYTHONPATH=DIR; nothing measured.",
            file=sys.stderr,
        )
        return
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    seeds = {int(s): run_seed(blora, int(s), args.pairs) for s in args.seeds.split(",")}
    setup = {"pairs": args.pairs, "length": LENGTH, "queries": QUERIES, "n_kfac": N_KFAC}
    name = page_name(args.out)
    save(name, "bayesian_lora", {"environment": env, "setup": setup, "seeds": seeds})
    report.write(name)


if __name__ == "__main__":
    main()
