"""What every posterior structure provides, and the parts they share.

Shape legend: ``N`` items, ``R`` Jacobian batches taken together, ``S`` samples, ``P``
posterior parameters, ``in``/``out`` the sizes of a linear layer.

A fitted linearized Laplace posterior ``theta ~ N(theta*, Sigma)`` enters every prediction
through ``J(x) Sigma J(x')^T``. Per-item Jacobians come in one of two forms, decided once per
batch by :class:`~bt_laplace.predictive.Predictive`:

- :class:`~bt_laplace._layer_io.LayerIO`: input activations ``a`` and output gradients ``g`` of
  the linear layers holding the posterior parameters (``J = [g a^T, g]`` per layer; ``a g^T``
  for a ``Conv1D`` weight, stored ``(in, out)``), from one
  forward and one backward pass: the fast path, never a per-item Jacobian;
- :class:`DenseJacobians`: laplace-torch's per-item Jacobians ``(N, P)``, for models outside
  the fast path. Their covariances come from laplace-torch's own ``functional_variance``, for
  every structure, here and nowhere else.

A structure (:class:`~bt_laplace.structures.DiagStructure`,
:class:`~bt_laplace.structures.KronStructure`, :class:`~bt_laplace.structures.FullStructure`;
each for all weights and for the last layer, which differ only in the parameters covered)
implements, for layer I/O:

- :meth:`PosteriorStructure.crosses`: row-wise ``J_i Sigma J_j^T`` ``(N,)``;
- :meth:`PosteriorStructure.dense_cross`: ``J Sigma Jbar^T`` and ``Jbar Sigma Jbar^T`` for one
  dense ``Jbar`` (a mean Jacobian, for rewards relative to a reference);
- :meth:`PosteriorStructure.group_variance`: ``(J_n - Jbar_g) Sigma (J_n - Jbar_g)^T`` with
  ``Jbar_g`` the mean Jacobian of each item's group (rewards relative to their group's);
- its curvature from layer I/O (:meth:`batch_curvature`, the fit side) and the eigenvalues
  of that curvature per parameter tensor (:meth:`curvature_eigenvalues`, for the prior);
- :meth:`curvature_state`: the tensors that define its curvature, by name: what a saved
  posterior stores and what processes sum;
- joint samples (:meth:`samples`) are shared: ``r(x) + J(x) (theta - theta*)`` with
  laplace-torch's draws of ``theta``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from laplace.baselaplace import ParametricLaplace
from laplace.lllaplace import LLLaplace

from bt_laplace._layer_io import (
    LayerIO,
    LayerIORecorder,
    bias_jacobian,
    is_sequence,
    posterior_parameters,
    weight_factors,
)
from bt_laplace._sharding import reshard

__all__ = ["DenseJacobians", "Jacobians", "PosteriorStructure", "SAMPLE_CHUNK"]

#: numbers of parameter draws ``(S, P)`` held at once while sampling (S is drawn in chunks)
SAMPLE_CHUNK = 2**24


@dataclass(frozen=True)
class DenseJacobians:
    """Per-item Jacobians from laplace-torch, for models outside the fast path.

    Attributes:
        output: Rewards ``(N,)`` at the MAP parameters.
        jac: Jacobians ``(N, P)`` of the rewards with respect to the posterior parameters.
    """

    output: torch.Tensor
    jac: torch.Tensor


#: per-item Jacobians in either form
Jacobians = LayerIO | DenseJacobians


class PosteriorStructure(ABC):
    """The covariance of one fitted laplace-torch posterior, applied to per-item Jacobians.

    Built once per posterior (see :func:`~bt_laplace.structures.structure_for`). The pieces of
    ``Sigma`` a structure needs are recomputed when the curvature, prior precision or
    temperature of the laplace-torch object change, and cast once per dtype.

    Args:
        laplace: The fitted laplace-torch posterior.
    """

    #: the ``hessian_structure`` name
    name: ClassVar[str]
    #: laplace-torch's class for this structure (its all-weights and last-layer subclasses)
    laplace_type: ClassVar[type]

    def __init__(self, laplace: ParametricLaplace) -> None:
        self.laplace: Any = laplace  # DiagLaplace, KronLaplace or FullLaplace
        self.last_layer = isinstance(laplace, LLLaplace)
        self.recorder = LayerIORecorder(laplace.model, posterior_parameters(laplace))
        self._cache: Any = None
        self._cache_key: Any = None
        self._cast: tuple[Any, torch.dtype, Any] | None = None

    #: whether the covariance is one dense ``P x P`` matrix (its memory is checked before a
    #: fit; it keeps the covariance between layers, so the exact evidence's prior suits it)
    dense_covariance: ClassVar[bool] = False
    #: settings of laplace-torch's class that a saved posterior records by name (``kron``:
    #: ``damping``), passed back to the class when it is loaded
    saved_settings: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    @abstractmethod
    def laplace_class(cls, subset_of_weights: str, pair_backend: bool) -> type:
        """The laplace-torch class to build for this structure: laplace-torch's own, reading
        the model in place and in at least float32 (:mod:`bt_laplace.structures.inplace`)."""

    @classmethod
    def build_laplace(
        cls, model: Any, subset_of_weights: str, *, pair_backend: bool, **laplace_kwargs: Any
    ) -> Any:
        """The unfitted laplace-torch posterior of this structure over ``model`` (the fit and
        a loaded posterior build it here alike)."""
        laplace_cls = cls.laplace_class(str(subset_of_weights), pair_backend)
        reshard(model)  # FSDP2: laplace-torch lists the registered shards, as every reader
        return laplace_cls(model, "reward_modeling", **laplace_kwargs)

    # ------------------------------------------------------------------ saved state
    @classmethod
    def saved_state(cls, laplace: Any) -> dict[str, torch.Tensor]:
        """The tensors a saved posterior stores for its curvature, by name: its
        :meth:`curvature_state` under ``curvature.``, and whatever else makes a loaded
        posterior's predictions bit-identical."""
        return {f"curvature.{k}": v for k, v in cls.curvature_state(laplace).items()}

    @classmethod
    def restore_state(cls, laplace: Any, state: dict[str, torch.Tensor]) -> None:
        """Set the fitted curvature of an unfitted ``laplace`` from :meth:`saved_state`."""
        laplace.H = state["curvature.H"]

    @classmethod
    def state_numbers(cls, shapes: list[tuple[int, ...]], backend_kwargs: dict[str, Any]) -> int:
        """How many numbers a fitted posterior of this structure over parameter tensors of
        ``shapes`` holds (what ``subset_of_weights="auto"`` weighs against its budget)."""
        raise NotImplementedError(f"{cls.name} does not state its size")

    @staticmethod
    def exact_ggn_eigenvalues(laplace: Any) -> torch.Tensor | None:
        """The eigenvalues of the exact tempered Bradley-Terry GGN (float64, CPU, clamped at
        0) read off the fitted curvature where it already is that GGN, so that the exact
        evidence needs no pass over the pairs; None otherwise (the default). Called only for
        posteriors fitted with bt_laplace's pair backend."""
        return None

    # ------------------------------------------------------------------ fit side
    @staticmethod
    def batch_curvature(
        recorder: LayerIORecorder, result: LayerIO, weight: torch.Tensor
    ) -> torch.Tensor:
        """The Bradley-Terry GGN of one batch of pairs in this structure's layout, from the
        layer I/O of its ``2B`` items (ordered pair by pair) and the pair weights ``(B,)``.
        Structures whose curvature is not a sum over batches (``kron``) keep their own
        accumulator instead."""
        raise NotImplementedError("this structure's curvature is not a sum over batches")

    @staticmethod
    def jacobian_curvature(d_jac: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The same from per-pair Jacobian differences ``J_1 - J_0`` ``(B, P)``."""
        raise NotImplementedError("this structure's curvature is not a sum over batches")

    @staticmethod
    @abstractmethod
    def curvature_eigenvalues(laplace: Any) -> list[torch.Tensor] | None:
        """Eigenvalues of the tempered curvature ``H / T``, one tensor per parameter tensor,
        or None when they do not separate that way."""

    @staticmethod
    def sum_across_processes(laplace: Any, sum_: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the fitted curvature, a sum over each process's pairs, by its sum over
        processes (``sum_`` all-reduces a tensor)."""
        laplace.H = sum_(laplace.H)

    @staticmethod
    @abstractmethod
    def curvature_state(laplace: Any) -> dict[str, torch.Tensor]:
        """The tensors that define the fitted curvature, by name (sums over pairs for
        ``diag`` and ``full``)."""

    # ------------------------------------------------------------------ posterior pieces
    @abstractmethod
    def _pieces(self) -> Any:
        """The pieces of ``Sigma`` this structure works with, in the posterior's dtype."""

    def pieces(self, dtype: torch.dtype) -> Any:
        """:meth:`_pieces`, cached per fitted curvature, prior and temperature, in ``dtype``."""
        la = self.laplace
        key = (la.H, la.prior_precision.detach().clone(), float(la.temperature))
        old = self._cache_key
        fresh = (
            self._cache is not None
            and old is not None
            and old[0] is key[0]
            and old[2] == key[2]
            and torch.equal(old[1], key[1])
        )
        if not fresh:
            self._cache, self._cache_key = self._pieces(), key
        pieces = self._cache
        if dtype == la._dtype:
            return pieces
        if self._cast is not None and self._cast[0] is pieces and self._cast[1] == dtype:
            return self._cast[2]
        cast = _cast(pieces, dtype)
        self._cast = (pieces, dtype, cast)
        return cast

    # ------------------------------------------------------------------ covariances
    def crosses(self, results: list[Jacobians], pairs: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Row-wise ``J(x_i) Sigma J(x_j)^T`` ``(N,)`` for each ``(i, j)`` of ``pairs``, for
        aligned batches of items ``results`` (sharing the per-batch work)."""
        if isinstance(results[0], DenseJacobians):
            cov = self._dense_covariance([r.jac for r in results])  # type: ignore[union-attr]
            return [cov[:, i, j] for i, j in pairs]
        return self._crosses(results, pairs)  # type: ignore[arg-type]

    def cross(self, left: Jacobians, right: Jacobians) -> torch.Tensor:
        """Row-wise ``J(x_n) Sigma J(x'_n)^T`` ``(N,)``."""
        if left is right:
            return self.crosses([left], [(0, 0)])[0]
        return self.crosses([left, right], [(0, 1)])[0]

    @abstractmethod
    def _crosses(self, results: list[LayerIO], pairs: list[tuple[int, int]]) -> list[torch.Tensor]:
        """:meth:`crosses` for layer I/O."""

    def mean_jacobian(self, results: list[Jacobians]) -> list[torch.Tensor]:
        """Mean Jacobian over all items of ``results``, per posterior parameter tensor in its
        shape (``mean g a^T`` ``(out, in)`` for an ``nn.Linear`` weight, ``mean a g^T``
        ``(in, out)`` for a ``Conv1D`` weight, ``mean g`` ``(out,)`` for a bias), or as one flat
        ``(P,)`` tensor for dense Jacobians."""
        n = sum(r.output.shape[0] for r in results)
        return [t / n for t in self.jacobian_sum(results)]

    def jacobian_sum(self, results: list[Jacobians]) -> list[torch.Tensor]:
        """Sum of the Jacobians over all items of ``results``, laid out as
        :meth:`mean_jacobian` (sums add up across batches)."""
        if isinstance(results[0], DenseJacobians):
            return [torch.cat([r.jac for r in results]).sum(0)]  # type: ignore[union-attr]
        io: list[LayerIO] = results  # type: ignore[assignment]
        sums: list[torch.Tensor] = []
        for slot in self.recorder.slots:
            g = torch.cat([r.grads[slot.layer] for r in io])
            if slot.kind == "bias":
                sums.append(bias_jacobian(g).sum(0))
            else:  # sum over items (and positions) of u v^T (g a^T; Conv1D: a g^T)
                a = torch.cat([r.acts[slot.layer] for r in io])
                u, v = weight_factors(slot, g, a)
                sums.append(u.reshape(-1, u.shape[-1]).T @ v.reshape(-1, v.shape[-1]))
        return sums

    def dense_cross(
        self, result: Jacobians, dense: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``J(x_n) Sigma Jbar^T`` ``(N,)`` and ``Jbar Sigma Jbar^T`` (scalar) for a dense
        ``Jbar`` given as by :meth:`mean_jacobian`."""
        if isinstance(result, DenseJacobians):
            jbar = dense[0].expand_as(result.jac)
            cov = self._dense_covariance([result.jac, jbar])
            return cov[:, 0, 1], cov[0, 1, 1]
        return self._dense_cross(result, dense)

    def group_variance(self, result: LayerIO, index: torch.Tensor, n_groups: int) -> torch.Tensor:
        """``(J_n - Jbar_g) Sigma (J_n - Jbar_g)^T`` ``(N,)``: the variance of each item's
        reward relative to the mean reward of its group, ``Jbar_g`` the mean Jacobian of the
        items of group ``g`` (``index`` ``(N,)`` into ``n_groups``, every group non-empty), for
        layer I/O, in float64 (the terms cancel), with no loop over the groups."""
        return self._group_variance(result, index, n_groups)

    @abstractmethod
    def _group_variance(self, result: LayerIO, index: torch.Tensor, n_groups: int) -> torch.Tensor:
        """:meth:`group_variance`."""

    @abstractmethod
    def _dense_cross(
        self, result: LayerIO, dense: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`dense_cross` for layer I/O."""

    def _dense_covariance(self, jacs: list[torch.Tensor]) -> torch.Tensor:
        """``(N, R, R)`` covariances of ``R`` aligned dense Jacobians ``(N, P)``, from
        laplace-torch's ``functional_variance`` (the fallback of every structure)."""
        return self.laplace.functional_variance(torch.stack(jacs, dim=1)).detach()

    # ------------------------------------------------------------------ samples
    def samples(
        self, result: Jacobians, n_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Joint samples ``(S, N)`` of the linearized rewards ``r(x) + J(x) (theta - theta*)``."""
        la = self.laplace
        step = max(1, SAMPLE_CHUNK // max(1, int(la.n_params)))  # draws of theta at a time
        return torch.cat(
            [
                self._linearized(result, la.sample(k, generator=generator) - la.mean)
                for k in [min(step, n_samples - s) for s in range(0, n_samples, step)]
            ]
        )

    def _linearized(self, result: Jacobians, delta: torch.Tensor) -> torch.Tensor:
        """``r(x) + J(x) delta`` ``(S, N)`` for parameter offsets ``delta`` ``(S, P)``."""
        n_samples = delta.shape[0]
        if isinstance(result, DenseJacobians):
            return result.output.reshape(1, -1) + delta @ result.jac.T
        out = result.output.expand(n_samples, -1).clone()
        slots = self.recorder.slots
        for slot, d in zip(slots, delta.split([s.numel for s in slots], 1), strict=True):
            g = result.grads[slot.layer]
            if slot.kind == "bias":
                out += d @ bias_jacobian(g).T
                continue
            u, v = weight_factors(slot, g, result.acts[slot.layer])
            dw = d.reshape(n_samples, u.shape[-1], v.shape[-1])  # in the weight's layout
            if is_sequence(v):
                out += torch.einsum("nlr,src,nlc->sn", u, dw, v)
            else:
                out += torch.einsum("nr,src,nc->sn", u, dw, v)
        return out


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(o, dtype) for o in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return type(obj)(*(_cast(getattr(obj, f), dtype) for f in obj.__dataclass_fields__))
    return obj
