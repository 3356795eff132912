"""What the exact evidence's eigenvalues cost by each solver at hand (issue 21, cost).

Run from the repository root (no extra needed beyond scipy, which the ``bench`` extra has)::

    python benchmarks/experiments/eigensolvers.py [--sizes 2560,4000] [--threads 2]

The default fit decomposes two symmetric positive semi-definite kernels at 4,000 pairs: the
exact evidence's ``4,000 x 4,000`` one and the held-out calibration's (the pairs among 80% of
the items, about ``2,560 x 2,560``). This times, on a random kernel of rank a third of its size
(float64; each best of two, after one warm-up call of the library): all eigenvalues by torch
(``torch.linalg.eigvalsh``, LAPACK ``syevd`` of the MKL torch ships) in float64 and float32,
by scipy's drivers ``evd``, ``evr`` and ``ev`` (its own OpenBLAS LAPACK), and for scale one
Cholesky factorization, which an exact evidence without eigenvalues would need several of (one
per prior tried, each with a triangular inverse for ``trace((K + delta)^-1)``).
"""

import argparse
import time

import scipy.linalg as sl
import torch


def best(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def solvers(k: torch.Tensor) -> dict:
    """The ways to time on the kernel ``k``."""
    eye = torch.eye(k.shape[0], dtype=k.dtype)
    return {
        "torch eigvalsh float64": lambda: torch.linalg.eigvalsh(k),
        "torch eigvalsh float32": lambda: torch.linalg.eigvalsh(k.float()),
        "scipy evd": lambda: sl.eigh(k.numpy(), eigvals_only=True, driver="evd"),
        "scipy evr": lambda: sl.eigh(k.numpy(), eigvals_only=True, driver="evr"),
        "scipy ev": lambda: sl.eigh(k.numpy(), eigvals_only=True, driver="ev"),
        "torch cholesky (one prior)": lambda: torch.linalg.cholesky(k + eye),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2560,4000")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    warm = torch.randn(1000, 1000, dtype=torch.float64, generator=gen)
    torch.linalg.eigvalsh(warm @ warm.T)  # the library's first large call
    print(f"torch threads {args.threads}; seconds, best of 2")
    for n in (int(s) for s in args.sizes.split(",")):
        a = torch.randn(n, n // 3, dtype=torch.float64, generator=gen)
        for name, fn in solvers(a @ a.T).items():
            print(f"{n:>6} {name:<28} {best(fn):.3f}")


if __name__ == "__main__":
    main()
