"""Peak memory of fits and queries against the number of pairs (issue 9).

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_memory.py                 # about 6 min on 2 cores
    PYTHONPATH=src python benchmarks/bench_memory.py --pairs 10000   # one size

Each point runs in a fresh subprocess: a 64-256-256-1 MLP reward model, pairs streamed from a
seeded ``IterableDataset`` (so the data itself takes no memory), ``fit_reward_posterior`` over
10,000 / 100,000 / 1,000,000 pairs; then ``post(x)`` over 200,000 items. Measured (Linux):
the peak resident memory during the fit above that at its start (after building the model and
the first batch), the peak of the anonymous memory likewise (:class:`PeakMemory`), and what it
is made of: the per-pair factors the kron fit kept at most
(``BradleyTerryGGN.kron_kept_bytes``) and the tensors of the posterior. Saves
``docs/data/memory.json`` and writes ``docs/results/memory.md`` from it (``benchmarks/report.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from typing import Any

import report
from _common import OUT_HELP, RESULTS, environment, page_name, reset_peak, save, status_kib

#: (subset_of_weights, hessian_structure, kron_store_limit or None for the default 1 GiB)
FITS: list[tuple[str, str, int | None]] = [
    ("all", "kron", None),
    ("all", "kron", 0),
    ("all", "diag", None),
    ("last_layer", "kron", None),
]
QUERY_PAIRS = 10_000  # the queries run after the fit on this many pairs


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (a tensor, or lists of them)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


def _posterior_bytes(la: Any) -> int:
    """The posterior's own tensors: the mean, the curvature (a vector, or Kronecker factors and
    their eigendecomposition)."""
    total = _tensor_bytes(la.mean)
    for h in (la.H, getattr(la, "H_facs", None)):
        total += _tensor_bytes(h)
        for attr in ("kfacs", "eigenvectors", "eigenvalues"):
            total += _tensor_bytes(getattr(h, attr, None))
    return total


class PeakMemory:
    """Peak memory of a block above that at its start, in MiB.

    ``rss``: the kernel's peak resident set (``VmHWM``, reset at the start through
    ``/proc/self/clear_refs``) minus the resident set then. It counts the pages of shared
    libraries too, which other processes' memory pressure can evict, so ``anon`` adds the peak
    of the anonymous memory (``RssAnon``, what the process allocated), sampled every
    millisecond by a thread.
    """

    def __enter__(self) -> PeakMemory:
        self.rss0, self.anon0 = reset_peak(), status_kib("RssAnon")
        self.anon_peak, self._stop = self.anon0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.anon_peak = max(self.anon_peak, status_kib("RssAnon"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.anon_peak = max(self.anon_peak, status_kib("RssAnon"))
        self.rss = (status_kib("VmHWM") - self.rss0) / 1024
        self.anon = (self.anon_peak - self.anon0) / 1024


def _child(n_pairs: int, subset: str, structure: str, store_limit: int | None) -> dict:
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    import bt_laplace as btl
    from bt_laplace.testing import mlp

    torch.set_num_threads(1)

    class Pairs(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for start in range(0, n_pairs, 4096):
                k = min(4096, n_pairs - start)
                x = torch.randn(k, 2, 64, generator=g)
                y = torch.randint(0, 2, (k,), generator=g)
                yield from zip(x, y, strict=True)

    torch.manual_seed(0)
    model = btl.PairwiseRewardModel(mlp(64, 256)).eval()
    loader = DataLoader(Pairs(), batch_size=1024)
    next(iter(loader))
    kwargs: dict[str, Any] = {}
    if store_limit is not None:
        kwargs["backend_kwargs"] = {"kron_store_limit": store_limit}
    with PeakMemory() as fit_memory:
        t = time.perf_counter()
        post = btl.fit_reward_posterior(
            model,
            loader,
            subset_of_weights=subset,
            hessian_structure=structure,
            evidence="posterior",
            **kwargs,
        )
        fit_s = time.perf_counter() - t
    la = post.laplace
    out = {
        "fit_s": fit_s,
        "fit_mib": fit_memory.rss,
        "fit_anon_mib": fit_memory.anon,
        "kept_mib": getattr(la.backend, "kron_kept_bytes", 0) / 2**20,
        "posterior_mib": _posterior_bytes(la) / 2**20,
        "n_params": la.n_params,
        "n_data": la.n_data,
    }
    if n_pairs == QUERY_PAIRS and store_limit is None:  # 200,000 items, batches of 4,096
        items = torch.randn(200_000, 64, generator=torch.Generator().manual_seed(1))
        with PeakMemory() as query_memory:
            t = time.perf_counter()
            post(items)
            out["query_s"] = time.perf_counter() - t
        out["query_mib"] = query_memory.rss
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "memory.md"), help=OUT_HELP)
    args = parser.parse_args()
    if args.child:
        n, subset, structure, limit = args.child
        store = None if limit == "default" else int(limit)
        print(json.dumps(_child(int(n), subset, structure, store)))
        return
    env = environment(threads=1)
    t0 = time.perf_counter()
    runs = []
    for subset, structure, store in FITS:
        for n in args.pairs:
            limit = "default" if store is None else str(store)
            cmd = [sys.executable, __file__, "--child", str(n), subset, structure, limit]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            r.update(subset=subset, structure=structure, store_limit=store, pairs=n)
            runs.append(r)
            print(json.dumps(r), flush=True)
    out = {
        "environment": env,
        "elapsed": time.perf_counter() - t0,
        "pairs": args.pairs,
        "runs": runs,
    }
    save(page_name(args.out), "memory", out)
    report.write(page_name(args.out))


if __name__ == "__main__":
    main()
