"""The exact Laplace evidence of a Bradley-Terry reward model: moved to
:mod:`bt_laplace.prior.evidence`, the prior's floor; its names stay importable from here."""

from typing import Any

from bt_laplace.prior import evidence as _moved

__all__ = list(_moved.__all__)


def __getattr__(name: str) -> Any:
    if name in _moved.__all__:
        return getattr(_moved, name)
    raise AttributeError(f"module 'bt_laplace.evidence' has no attribute {name!r}")
