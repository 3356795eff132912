"""Private: models whose parameters are sharded across ranks (torch's FSDP2 ``fully_shard``).

Under FSDP2 each registered parameter is a ``DTensor`` holding this rank's shard; a forward
all-gathers the parameters of each wrapped module, swaps the full (plain) tensors in while the
module runs, and swaps the shards back afterwards (for the root module only at the next
backward, or never after a forward without one). Layer inputs and output gradients, which
the curvature and every query are computed from, are therefore plain tensors; what needs care
is any code that reads the parameters themselves:

- *Which* tensor a parameter is: the registered objects change between the shards and the
  full tensors. :func:`reshard` registers the shards of every FSDP2 module again (local, no
  communication), so parameter lists, their owners and the weights check always see the
  same, stable shard objects.
- Their *values*: the posterior's mean, the weights fingerprint. :func:`full_value` gathers
  one parameter from every rank (a collective: every rank must call it, in the same order);
  :func:`local_value` is this rank's shard alone, for checks each rank runs on its own.

The posterior's own state (mean, curvature, prior) is built from full values and is the same,
replicated, on every rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "check_same_batch_counts",
    "check_sharded_batch_counts",
    "check_shardable",
    "full_value",
    "has_sharded_parameters",
    "is_sharded",
    "local_value",
    "parameter_vector",
    "reshard",
]


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def _fsdp_module_type() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return None
    return FSDPModule


def is_sharded(tensors: torch.Tensor | Iterable[torch.Tensor]) -> bool:
    """Whether a tensor, or any of several, is a ``DTensor`` (a shard of a parameter)."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return False
    if isinstance(tensors, torch.Tensor):
        return isinstance(tensors, dtensor)
    return any(isinstance(t, dtensor) for t in tensors)


def reshard(model: nn.Module) -> None:
    """Register the shards of every FSDP2 module in ``model`` (freeing full parameters kept
    after a forward); nothing for a model without FSDP2 modules. Local: no communication."""
    fsdp = _fsdp_module_type()
    if fsdp is None:
        return
    for module in model.modules():
        if isinstance(module, fsdp):
            module.reshard()  # type: ignore[operator]


def has_sharded_parameters(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is sharded (FSDP2), its shards registered first."""
    reshard(model)
    return is_sharded(model.parameters())


def full_value(t: torch.Tensor) -> torch.Tensor:
    """The full value of a parameter, gathered from every rank if it is sharded (a collective
    for a ``DTensor``), detached; ``t`` itself, detached, otherwise."""
    if is_sharded(t):
        return t.full_tensor().detach()  # type: ignore[attr-defined]
    return t.detach()


def local_value(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded parameter (a ``DTensor``: local, no communication),
    ``t`` itself otherwise."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def parameter_vector(params: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> Any:
    """``torch.nn.utils.parameters_to_vector`` of the full values ``(P,)``, in ``dtype``,
    gathering one sharded parameter at a time (memory: the vector and one parameter)."""
    if not params:
        return torch.empty(0, dtype=dtype)
    first = params[0]
    out = torch.empty(
        sum(p.numel() for p in params), dtype=dtype or first.dtype, device=first.device
    )
    start = 0
    for p in params:
        out[start : start + p.numel()] = full_value(p).reshape(-1).to(out.dtype)
        start += p.numel()
    return out


def check_shardable(model: nn.Module) -> None:
    """Refuse sharding schemes a posterior cannot read, naming the fix: FSDP1's
    ``FullyShardedDataParallel`` (flattened parameters) and DeepSpeed ZeRO-3 partitioned
    parameters (empty outside the engine's forward)."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        FullyShardedDataParallel = ()  # type: ignore[assignment,misc]  # noqa: N806
    for module in model.modules():
        if isinstance(module, FullyShardedDataParallel):
            raise NotImplementedError(
                "`model` is wrapped in FSDP1's FullyShardedDataParallel, whose flattened "
                "parameters a posterior cannot read per layer; shard it with FSDP2, "
                "torch.distributed.fsdp.fully_shard (accelerate: fsdp_version: 2 in the FSDP "
                "plugin), or fit the unwrapped model on every rank."
            )
    partitioned = [
        name
        for name, p in model.named_parameters()
        if hasattr(p, "ds_id") and not getattr(p, "ds_persist", False)
    ]
    if partitioned:
        raise NotImplementedError(
            f"`model` has {len(partitioned)} parameters partitioned by DeepSpeed ZeRO-3 "
            f"(e.g. {partitioned[0]!r}), which are empty outside the engine's forward, so "
            "the posterior's parameters and weights check cannot be read. Consolidate the "
            "weights into an ordinary model (DeepSpeed's zero_to_fp32.py, "
            "engine.save_16bit_model, or accelerate's get_state_dict) and fit it on every rank "
            "(torchrun: each rank its shard of pairs), or shard it with FSDP2 "
            "(torch.distributed.fsdp.fully_shard); ZeRO-1/2 keep whole parameters and work as "
            "they are."
        )


def check_same_batch_counts(loaders: dict[str, Any]) -> None:
    """Refuse loaders (by argument name; None is skipped) whose number of batches differs
    between ranks: every forward of a sharded model gathers its parameters from all ranks, so
    a rank with a batch more than another would wait for it forever. A collective over the
    default process group; loaders without ``len()`` are not checked."""
    import torch.distributed as dist

    for name, loader in loaders.items():
        if loader is None or not hasattr(loader, "__len__"):
            continue
        count = torch.tensor([len(loader), -len(loader)], dtype=torch.long)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        most, fewest = int(count[0]), -int(count[1])
        if most != fewest:
            raise ValueError(
                f"`{name}` has between {fewest} and {most} batches across the "
                f"{dist.get_world_size()} ranks (this rank: {len(loader)}), but a sharded "
                "model's forward runs on all ranks at once, so each rank must pass the same "
                "number of batches (the last may hold fewer pairs). Split the pairs evenly "
                "(e.g. pairs[rank::world] with a batch size that gives each rank as many "
                "batches, or torch.utils.data.DistributedSampler with drop_last=True)."
            )


def check_sharded_batch_counts(model: nn.Module, **loaders: Any) -> None:
    """:func:`check_same_batch_counts` of the ``loaders`` (by argument name) where ``model`` has
    sharded parameters (its forwards gather weights: all ranks must run them in step)."""
    if has_sharded_parameters(model):
        check_same_batch_counts(loaders)
