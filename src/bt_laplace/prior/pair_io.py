"""One pass over a posterior's training pairs for the exact evidence: the items' layer I/O,
the pairs' weights and the items' inputs, gathered over processes.

Shape legend: ``N`` training pairs, ``P`` posterior parameters, ``B`` pairs in a batch.

:func:`collect_pair_io` runs :class:`~bt_laplace.curvature.BradleyTerryGGN`'s pair pass over
this process's pairs and keeps what the kernels of :mod:`bt_laplace.prior.kernel` are built
from; :func:`gathered_pairs` joins every process's pairs in rank order and finds their distinct
items. Where the layer I/O does not give the kernel (a parameter off the fast path, a
sequence), the rows of the pair Jacobian are kept instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from laplace.baselaplace import ParametricLaplace
from laplace.lllaplace import LLLaplace

from bt_laplace._distributed import Processes
from bt_laplace._layer_io import is_sequence
from bt_laplace._loader import batch_on
from bt_laplace.curvature import BradleyTerryGGN
from bt_laplace.prior.kernel import (
    Kinds,
    LayerRows,
    PairItems,
    centering_of,
    pair_items,
    rows_per_pair,
    weight_width,
)

__all__ = [
    "pair_backend",
    "check_size",
    "check_count",
    "layer_kinds",
    "distinct_input_count",
    "collect_pair_io",
    "gathered_pairs",
    "centering_weight",
]


def pair_backend(laplace: ParametricLaplace) -> BradleyTerryGGN:
    """A :class:`BradleyTerryGGN` over the posterior's parameters, whatever its fit backend
    (with the centering coefficient the posterior was fit with, if any)."""
    last_layer = isinstance(laplace, LLLaplace)
    if last_layer and laplace.model.last_layer is None:
        raise RuntimeError("fit the last-layer Laplace before computing its exact evidence.")
    return BradleyTerryGGN(
        laplace.model,
        "classification",
        last_layer=last_layer,
        dict_key_x=laplace.dict_key_x,
        dict_key_y=laplace.dict_key_y,
        center_rewards_coefficient=centering_of(laplace),
    )


def centering_weight(backend: BradleyTerryGGN) -> float:
    """The weight ``2 c`` of the centering rows of TRL's ``center_rewards_coefficient`` ``c``
    (0 without centering)."""
    return 2 * backend.center_rewards_coefficient


def check_size(rows: int, cols: int, what: str, fix: str, limit: int) -> None:
    """Refuse a dense float64 ``rows x cols`` matrix above ``limit`` bytes, naming ``what`` it
    is and the ``fix``."""
    need = rows * cols * 8
    if need > limit:
        raise ValueError(
            f"the exact evidence needs {what}, {rows:,} x {cols:,} in float64 "
            f"({need / 2**30:.1f} GiB), above the {limit / 2**30:.0f} GiB limit; {fix}"
        )


def check_count(seen: int, n_pairs: int) -> None:
    """Refuse a loader that did not yield each of the posterior's ``n_pairs`` pairs once."""
    if seen != n_pairs:
        raise ValueError(
            f"`train_loader` yielded {seen} pairs but its dataset has {n_pairs} (the pairs the "
            "posterior was fitted on); the exact evidence needs every training pair once "
            "(drop_last=False, no sampler that repeats or skips)."
        )


def layer_kinds(backend: BradleyTerryGGN) -> Kinds:
    """The kinds (``"weight"``, ``"bias"``) of posterior parameters of each tapped layer."""
    kinds: Kinds = {}
    for slot in backend.layer_io.slots:
        kinds.setdefault(slot.layer, set()).add(slot.kind)
    return kinds


def distinct_input_count(
    train_loader: Iterable[Any],
    laplace: ParametricLaplace,
    processes: Processes,
) -> int | None:
    """The number of distinct items among the inputs of every process's pairs, or None where
    some batch's inputs are not one tensor of items at most
    :func:`~bt_laplace.prior.kernel.weight_width` wide (about the layer I/O an item has)."""
    width = weight_width(laplace)
    rows: list[torch.Tensor] = []
    for data in train_loader:
        x, _ = batch_on(data, laplace.dict_key_y, laplace._device)
        if not isinstance(x, torch.Tensor) or x[0, 0].numel() > width:
            rows = []
            break
        rows.append(x.reshape(2 * len(x), -1))
    if processes.sum_number(0 if rows else 1) > 0:
        return None
    return int(torch.unique(processes.gather_rows(torch.cat(rows)), dim=0).shape[0])


def collect_pair_io(
    backend: BradleyTerryGGN,
    batches: Iterable[Any],
    laplace: ParametricLaplace,
    n_pairs: int,
    n_params: int,
    memory_limit: int,
    fix: str | None,
) -> tuple[int, LayerRows, torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """One pass over this process's pairs: their number, the items' layer I/O (float64,
    gradients unweighted), ``sqrt(w)`` per pair and the items' inputs ``(2N, d)`` (None
    unless every batch's are one tensor of at most the layer I/O's width: they only tell
    which items are the same), or, where the Gram-matrix shortcut does not apply (a parameter
    off the fast path, a sequence), the rows ``W^1/2 dJ`` ``(B, P)`` of the pair Jacobian
    instead, with TRL's centering term ``B`` rows of ``sqrt(2 c) (J_0 + J_1)`` after each
    batch's (``BradleyTerryGGN.objective_rows``). Then the layer I/O is empty; with ``fix``
    None the pass stops at the first such batch, else ``fix`` completes the error when the
    rows would exceed ``memory_limit``."""
    n_layers = len(backend.layer_io.layers)
    acts: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    grads: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    roots: list[torch.Tensor] = []
    inputs: list[torch.Tensor] | None = []
    rows: list[torch.Tensor] = []  # W^1/2 dJ rows, when the taps do not fit the model
    seen = 0
    for data in batches:
        x, y = batch_on(data, laplace.dict_key_y, laplace._device)
        _, w, result, jac = backend.pair_pass(x, y)
        root = w.to(torch.float64).sqrt()
        seen += len(root)
        if result is not None and any(is_sequence(a) for a in result.acts):
            jac = backend.layer_io.jacobian(result).reshape(len(root), 2, -1)  # no Gram shortcut
            result = None
        if result is None:
            assert jac is not None
            d_jac, weight = backend.objective_rows(jac, w)
            phi = d_jac.to(torch.float64) * weight.to(torch.float64).sqrt()[:, None]
            if fix is None:
                return seen, LayerRows([], []), root, None, [phi]
            if not rows:
                what = (
                    "the pair Jacobian (its Gram-matrix shortcut needs every posterior "
                    "parameter in an nn.Linear or Conv1D called once on (N, in) inputs)"
                )
                n_rows = n_pairs * rows_per_pair(laplace)
                check_size(n_rows, n_params, what, fix, memory_limit)
            rows.append(phi)
            continue
        roots.append(root)
        io_width = sum(t.shape[-1] for t in (*result.acts, *result.grads))
        if inputs is not None and isinstance(x, torch.Tensor) and x[0, 0].numel() <= io_width:
            inputs.append(x.reshape(2 * len(root), -1))  # kept where no larger than the I/O
        else:
            inputs = None
        for i in range(n_layers):
            acts[i].append(result.acts[i].to(torch.float64))
            grads[i].append(result.grads[i].to(torch.float64))
    empty = torch.zeros(0, dtype=torch.float64, device=laplace._device)
    items = LayerRows(
        [torch.cat(a) if a else empty for a in acts], [torch.cat(g) if g else empty for g in grads]
    )
    keys = torch.cat(inputs) if inputs else None
    return seen, items, torch.cat(roots) if roots else empty, keys, rows


def gathered_pairs(
    items: LayerRows,
    root: torch.Tensor,
    inputs: torch.Tensor | None,
    processes: Processes,
    centering: float = 0.0,
) -> PairItems:
    """The pairs of every process in rank order, with their distinct items (by input where
    every process has tensor inputs); ``centering``: the weight ``2 c`` of TRL's centering
    rows (:class:`~bt_laplace.prior.kernel.PairItems`)."""
    gathered = LayerRows(
        [processes.gather_rows(a) for a in items.acts],
        [processes.gather_rows(g) for g in items.grads],
    )
    everyone = processes.sum_number(0 if inputs is not None else 1) == 0
    keys = processes.gather_rows(inputs) if everyone and inputs is not None else None
    return pair_items(gathered, processes.gather_rows(root), keys, centering=centering)
