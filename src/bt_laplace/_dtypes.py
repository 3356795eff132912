"""Private: the dtype rules for half-precision models.

A bfloat16 or float16 reward model is read in its own dtype (its forward, its layer inputs and
output gradients) and never cast; everything a posterior sums or decomposes is in float32 or
wider (:func:`compute_dtype`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HALF_DTYPES", "compute_dtype", "model_dtype", "widen"]

#: the half-precision floating dtypes a model may hold
HALF_DTYPES = (torch.float16, torch.bfloat16)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of a model's first floating parameter (what its real-valued inputs need)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a posterior over a model of ``dtype`` computes in: float32 for half
    precision, else the model's own."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def widen(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is half precision, else ``t`` itself."""
    return t.float() if t.dtype in HALF_DTYPES else t
