"""docs/results/prior.md from docs/data/prior.json (benchmarks/bench_prior.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _common import environment_lines, fmt, md_table

GOAL = 0.1  # issue 3: within 10% of the exact optimum


def _row(r: dict[str, Any]) -> list[str]:
    exact = r["exact"]

    def off(v: float) -> str:
        return f"{fmt(v)} ({100 * (v / exact - 1):+.1f}%)"

    def goal(v: float) -> str:
        return " ok" if abs(v / exact - 1) <= GOAL else " MISS"

    return [
        r["model"],
        fmt(exact),
        off(r["exact_blocks"]),
        off(r["bt_kron"]) + goal(r["bt_kron"]),
        f"{100 * (r['bt_kron'] / r['exact_blocks'] - 1):+.1f}%",
        off(r["lt_kron"]),
        off(r["bt_diag"]),
        off(r["bt_kron_exact_evidence"]) + goal(r["bt_kron_exact_evidence"]),
        f"{r['kron_s']:.2f} / {r['kron_exact_evidence_s']:.2f}",
        f"{r['seconds']:.1f}",
    ]


def render(data: dict[str, Any], page: Path) -> str:
    return "\n".join(
        [
            "# Marginal-likelihood prior precision: exact GGN vs block-diagonal vs Kronecker",
            "",
            *environment_lines(data["environment"]),
            f"- Total run time: {data['elapsed']:.0f} s",
            "",
            f"MLPs `D -> H -> H -> 1` (tanh, float64), MAP-trained (AdamW, 5 epochs) on "
            f"{data['pairs']} pairs from a random teacher. Scalar prior precision maximizing the "
            "Laplace evidence. *exact*: the evidence with the exact Bradley-Terry GGN, its "
            "log-determinant from the eigenvalues of the N x N pair kernel. *exact "
            "block-diagonal*: the same GGN cut to its diagonal blocks per parameter tensor, "
            "every block exact (the best any per-tensor block-diagonal posterior can do). "
            "bt_laplace and laplace-torch: what `fit_reward_posterior(..., "
            "prior_precision='marglik')` and laplace-torch's `optimize_prior_precision` return "
            "(100 Adam steps); *evidence='exact'*: `fit_reward_posterior(..., "
            "evidence='exact')`, which maximizes the exact-GGN evidence whatever the posterior "
            "structure (bt_laplace.evidence: pair kernel from activations and output gradients, "
            "root of the stationarity condition), computed by the library independently of "
            "this script's kernel. Goal of issue 3: within 10% of exact.",
            "",
            md_table(
                [
                    "model",
                    "exact",
                    "exact block-diagonal",
                    "bt_laplace kron, default evidence (goal within 10%)",
                    "bt kron vs exact block-diagonal",
                    "laplace-torch kron",
                    "bt_laplace diag",
                    "bt_laplace kron, evidence='exact'",
                    "fit + prior s: kron / kron exact",
                    "s",
                ],
                [_row(r) for r in data["rows"]],
            ),
            "",
            "Cutting the GGN into per-tensor blocks alone moves the optimum by the amount in the "
            "third column: the covariance between layers, which no block-diagonal (Kronecker or "
            "diagonal) posterior keeps, is what separates bt kron from the exact prior; the "
            "Kronecker error within the blocks adds the difference in the fifth column. "
            "`evidence='exact'` removes both: it costs one more pass over the pairs and an "
            "N x N eigendecomposition (the time column: fit plus prior with the posterior's own "
            "evidence, then with the exact one).",
            "",
        ]
    )
