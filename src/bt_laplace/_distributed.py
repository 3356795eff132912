"""Private: sums and gathers across the processes of a ``torch.distributed`` group.

A fit over data split across ranks (torchrun, ``accelerate launch``, a DDP-wrapped model)
gives every rank the posterior of all the data when the sums over pairs (curvature, loss,
pair count, the alternating steps of the Kronecker factors, the exact evidence, the
validation NLL of the grid search) are summed across ranks. Each helper is the identity
when no group is in use.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["Processes"]


class Processes:
    """The process group a fit sums over, or none.

    Args:
        enabled: Sum across ranks when a default process group is initialized (and has more
            than one rank); False fits each rank on its own data.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.active = (
            enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        )
        self.world_size = dist.get_world_size() if self.active else 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over ranks (a new tensor; ``t`` is left as it is)."""
        if not self.active:
            return t
        out = t.detach().clone().contiguous()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def sum_number(self, value: float) -> float:
        """A Python number summed over ranks."""
        if not self.active:
            return value
        return float(self.sum(torch.tensor([float(value)], dtype=torch.float64)))

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Rows ``(n_r, ...)`` of every rank concatenated in rank order ``(sum n_r, ...)``."""
        if not self.active:
            return t
        t = t.contiguous()
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.long))
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)])
