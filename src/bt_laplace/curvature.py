"""Pair-correct curvature for laplace-torch: the exact Bradley-Terry GGN and its Kronecker form.

Shape legend: ``B`` pairs, ``2`` the two items of a pair, ``P`` posterior parameters,
``in``/``out`` the input and output sizes of a linear layer.

For pairs with Bradley-Terry logit ``f = r(x_1) - r(x_0)`` and ``p = sigmoid(f)``, the
generalized Gauss-Newton matrix of the negative log likelihood is

.. math:: H = \\sum_{pairs} p (1 - p) (J_1 - J_0)^T (J_1 - J_0),

where ``J_i`` is the Jacobian of the reward of item ``i`` with respect to the parameters.
A reward model trained with TRL's ``center_rewards_coefficient`` ``c`` (the loss
``c (r(x_0) + r(x_1))^2`` a pair, which pins the reward level that the pairs leave free) adds
that term's exact GGN, ``2 c (J_0 + J_1)^T (J_0 + J_1)``, to ``H`` and the term to the loss
(:meth:`BradleyTerryGGN.objective_pairs`).
:class:`BradleyTerryGGN` computes it from per-item activations ``a`` and output gradients ``g``
of the linear layers (``J = g a^T`` per layer; ``a g^T`` for a ``Conv1D`` weight stored
``(in, out)``), without per-item Jacobians:

- ``diag`` and ``full``: exact.
- ``kron``: per weight, the nearest Kronecker product of the exact block, bias blocks exact
  (:mod:`bt_laplace.structures.kron`). laplace-torch's KFAC instead treats the ``2B`` items as
  independent samples.

The per-structure math lives in :mod:`bt_laplace.structures` (one class per structure); this
backend runs the pair pass (layer I/O, or laplace-torch's Jacobians for models outside the
fast path) and hands the batch to it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from laplace.curvature.curvature import CurvatureInterface
from laplace.utils import Kron
from torch import nn

from bt_laplace._checks import check_centering
from bt_laplace._layer_io import LayerIO, LayerIORecorder, backend_jacobians
from bt_laplace._sharding import reshard
from bt_laplace.bradley_terry import bradley_terry_weight, margin_shift
from bt_laplace.structures import DiagStructure, FullStructure, PosteriorStructure
from bt_laplace.structures.kron import PairKronLaplace, PairKronLLLaplace
from bt_laplace.structures.kron_factors import PairKronFactors, nearest_kronecker_factors
from bt_laplace.structures.low_rank import KRON_FULL_WIDTH, KRON_RANK, check_low_rank

__all__ = [
    "BradleyTerryGGN",
    "PairKronLaplace",
    "PairKronLLLaplace",
    "is_pair_backend",
    "nearest_kronecker_factors",
    "with_sum_pairs",
]


class BradleyTerryGGN(CurvatureInterface):
    """Exact Bradley-Terry GGN backend for laplace-torch (``backend=BradleyTerryGGN``).

    Expects the model to map pairs ``(B, 2, *item)`` to logits ``(B, 2)`` (as
    :class:`~bt_laplace.PairwiseRewardModel` does) and labels ``y`` ``(B,)`` in ``{0, 1}``.

    Args:
        model: The pair model, or laplace-torch's ``FeatureExtractor`` around it (last layer).
        likelihood: ``"classification"`` (what laplace-torch passes for reward modeling).
        last_layer: Restrict to the last linear layer.
        subnetwork_indices: Not supported.
        dict_key_x: Forwarded to laplace-torch.
        dict_key_y: Forwarded to laplace-torch.
        kron_iterations: Alternating half-steps of the nearest Kronecker product from
            ``A = I``. Two are within 0.01-0.25% of the nearest-Kronecker floor on the
            accuracy MLPs (docs/results/accuracy.md). Set it through ``backend_kwargs``.
        kron_store_limit: Bytes of per-pair factors the ``kron`` fit keeps for the
            alternating half-steps after the first (default 1 GiB, about 160,000 pairs for
            all weights of a 64-256-256-1 MLP, whose hidden layers keep 6,660 bytes a pair);
            past it, each such half-step recomputes them with one more pass over the pairs,
            so memory does not grow with the pairs. A layer that is a Kronecker product
            already (one output, as a reward model's head, so a whole last-layer fit) keeps
            nothing. Set it through ``backend_kwargs``.
        kron_rank: Eigenpairs kept of each Kronecker factor wider than ``kron_full_width``
            (default :data:`~bt_laplace.structures.low_rank.KRON_RANK`, 128), the rest of its
            spectrum one number (:mod:`bt_laplace.structures.low_rank`): a LoRA matrix's
            ``d x d`` factor at an LLM's width is never formed. None keeps every factor
            whole. Set it through ``backend_kwargs``.
        kron_full_width: Kronecker factors up to this width are kept whole (default
            :data:`~bt_laplace.structures.low_rank.KRON_FULL_WIDTH`, 2048). Set it through
            ``backend_kwargs``.
        center_rewards_coefficient: TRL's ``RewardConfig.center_rewards_coefficient`` the
            model was trained with: the curvature and the loss then hold the centering term
            ``c (r(x_0) + r(x_1))^2`` of every pair as well (module doc). None or 0 (default):
            the Bradley-Terry likelihood alone. Set it through ``backend_kwargs``, or as
            :func:`~bt_laplace.fit_reward_posterior`'s argument of that name.

    Attributes:
        kron_kept_bytes: The most bytes of per-pair factors the last ``kron`` fit kept at once
            (0 when it kept none; see ``kron_store_limit``).

    Example:
        >>> import torch
        >>> from laplace import Laplace
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from bt_laplace import PairwiseRewardModel
        >>> model = PairwiseRewardModel(nn.Sequential(nn.Linear(3, 5), nn.Tanh(),
        ...                                           nn.Linear(5, 1)))
        >>> loader = DataLoader(TensorDataset(torch.randn(8, 2, 3), torch.ones(8).long()),
        ...                     batch_size=4)
        >>> la = Laplace(model, "reward_modeling", subset_of_weights="all",
        ...              hessian_structure="diag", backend=BradleyTerryGGN)
        >>> la.fit(loader)
        >>> float(la.H[-1])  # the head bias cancels in r(x1) - r(x0): no curvature
        0.0
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        last_layer: bool = False,
        subnetwork_indices: torch.LongTensor | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        kron_iterations: int = 2,
        kron_store_limit: int | None = None,
        kron_rank: int | None = KRON_RANK,
        kron_full_width: int = KRON_FULL_WIDTH,
        center_rewards_coefficient: float | None = None,
    ) -> None:
        if subnetwork_indices is not None:
            raise NotImplementedError(
                "BradleyTerryGGN does not support subnetwork Laplace; use "
                "subset_of_weights='all' or 'last_layer'."
            )
        reshard(model)  # FSDP2: list the registered shards (the recorder maps those)
        super().__init__(model, likelihood, last_layer, None, dict_key_x, dict_key_y)
        self.kron_iterations = kron_iterations
        self.kron_store_limit = kron_store_limit
        self.kron_rank, self.kron_full_width = check_low_rank(kron_rank, kron_full_width)
        self.center_rewards_coefficient = check_centering(center_rewards_coefficient)
        self._layer_io: LayerIORecorder | None = None
        self._kron_store: PairKronFactors | None = None
        self.kron_kept_bytes = 0
        self._zero_kron: Kron | None = None

    @property
    def layer_io(self) -> LayerIORecorder:
        """Hook-based recorder over the posterior's linear layers (built on first use)."""
        if self._layer_io is None:
            self._layer_io = LayerIORecorder(self.model, list(self.params))
        return self._layer_io

    # ------------------------------------------------------------------ pair factors
    def pair_pass(
        self, x: torch.Tensor | MutableMapping[str, Any], y: torch.Tensor, *, kron: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, LayerIO | None, torch.Tensor | None]:
        """One pass over a batch of pairs.

        Returns ``(loss, weight (B,), taps result or None, J (B, 2, P) or None)``: the
        Bradley-Terry loss and weights (with the centering term's loss, if any, in ``loss``);
        per-item Jacobians are the fallback when the taps do not fit the model, except for
        ``kron``.
        """
        result = self.layer_io.try_run(lambda: self.model(x))
        if result is not None:
            logits = result.output.reshape(-1, 2)
            jac = None
        elif self.last_layer and getattr(self.model, "feature_reduction", None) is None:
            raise NotImplementedError(
                f"a last-layer posterior needs the last layer to be an nn.Linear called once per "
                f"forward on (N, in) features, but {self.layer_io.reason}; pool the sequence "
                "before the last nn.Linear (e.g. mean over positions), pass "
                "feature_reduction='average' (laplace-torch's, for a linear head averaged over "
                "positions), or use "
                "subset_of_weights='all'."
            )
        elif kron:
            raise NotImplementedError(
                f"hessian_structure='kron' needs every posterior parameter in an nn.Linear "
                f"(or Conv1D) layer called once per forward on (N, in) inputs, but "
                f"{self.layer_io.reason}; use hessian_structure='diag' or 'full'"
                + ("." if self.last_layer else ", or subset_of_weights='last_layer'.")
            )
        else:
            jac, logits = backend_jacobians(self, x, last_layer=self.last_layer)  # (B, 2, P)
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise ValueError(
                f"the model must map pairs to logits (B, 2), got {tuple(logits.shape)}; "
                "wrap the reward network in bt_laplace.PairwiseRewardModel."
            )
        if not bool(torch.isfinite(logits).all()):
            raise ValueError(
                "the model's rewards on a batch of pairs are NaN or infinite, so the curvature "
                "would be too; check the inputs (values too large for the model overflow it) "
                "and the model's weights."
            )
        rewards = logits
        y = y.to(logits.device).long()
        shift = margin_shift(x, y)
        if shift is not None:  # TRL's margin: the preferred item's logit loses m
            margin = shift.to(logits.dtype) * (2 * y - 1)
            logits = logits - nn.functional.one_hot(y, 2).to(logits.dtype) * margin[:, None]
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        if self.center_rewards_coefficient:  # TRL's centering term, on the rewards themselves
            loss = loss + self.center_rewards_coefficient * rewards.sum(1).square().sum()
        weight = bradley_terry_weight(logits[:, 1] - logits[:, 0])
        return loss.detach(), weight.detach(), result, jac

    def objective_pairs(
        self, result: LayerIO, weight: torch.Tensor
    ) -> tuple[LayerIO, torch.Tensor]:
        """The layer I/O and weights of the pairs whose exact GGN is the training objective's.

        Without centering, ``result`` and ``weight`` as they are. With TRL's
        ``center_rewards_coefficient`` ``c``, twice the pairs: after the ``B`` Bradley-Terry
        pairs, ``B`` more with item 0's output gradients negated and weight ``2 c``, so that
        every structure's pair curvature ``w (J_1 - J_0)^T (J_1 - J_0)`` of them is the
        centering term's ``2 c (J_1 + J_0)^T (J_1 + J_0)``.
        """
        c = self.center_rewards_coefficient
        if not c:
            return result, weight
        return with_sum_pairs(result, weight, torch.full_like(weight, 2 * c))

    def objective_rows(
        self, jac: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`objective_pairs` for per-item Jacobians ``(B, 2, P)``: the rows ``(B, P)``
        of ``J_1 - J_0`` (and of ``J_1 + J_0`` with weight ``2 c`` after them, with
        centering) and their weights."""
        rows = jac[:, 1] - jac[:, 0]
        c = self.center_rewards_coefficient
        if not c:
            return rows, weight
        rows = torch.cat([rows, jac[:, 1] + jac[:, 0]])
        return rows, torch.cat([weight, torch.full_like(weight, 2 * c)])

    def _curvature(
        self, structure: type[PosteriorStructure], x: Any, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, w, result, jac = self.pair_pass(x, y)
        if jac is not None:
            return loss, structure.jacobian_curvature(*self.objective_rows(jac, w))
        assert result is not None
        return loss, structure.batch_curvature(self.layer_io, *self.objective_pairs(result, w))

    # ------------------------------------------------------------------ structures
    def full(self, x: Any, y: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact GGN ``(P, P)`` of a batch of pairs."""
        return self._curvature(FullStructure, x, y)

    def diag(self, x: Any, y: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact GGN diagonal ``(P,)`` of a batch of pairs."""
        return self._curvature(DiagStructure, x, y)

    def kron(self, x: Any, y: torch.Tensor, N: int, **kwargs: Any) -> tuple[torch.Tensor, Kron]:
        """Sum the batch into the pair Kronecker factors and keep its per-pair factors where
        later half-steps need them; the factors are finished by ``finish_kron``.

        Returns the loss and an all-zero :class:`~laplace.utils.Kron` so that laplace-torch's
        batch loop can run unchanged.
        """
        loss, w, result, _ = self.pair_pass(x, y, kron=True)
        assert result is not None
        if self._kron_store is None:
            self.reset_kron()
        assert self._kron_store is not None
        self._kron_store.add(*self.objective_pairs(result, w))
        if self._zero_kron is None:  # no factors: adding it returns the other operand
            self._zero_kron = _ZeroKron([])
        return loss, self._zero_kron

    def reset_kron(self) -> None:
        """Forget the pair factors summed or kept so far (called at the start of a fit)."""
        self._kron_store = PairKronFactors(
            self.layer_io,
            self.kron_iterations,
            store_limit=self.kron_store_limit,
            rank=self.kron_rank,
            full_width=self.kron_full_width,
        )

    def finish_kron(self, reduce: Any = None, batches: Any = None) -> Kron:
        """Kronecker factors over all pairs, in laplace-torch's ``Kron`` layout (``reduce``
        sums over processes, ``batches`` recomputes the pair factors when there were too many
        to keep; see :class:`PairKronFactors`)."""
        stored, self._kron_store = self._kron_store, None
        if stored is None:
            raise RuntimeError("no pairs were stored; call kron() on the batches first.")
        self.kron_kept_bytes = stored.peak_bytes
        return stored.finish(reduce, batches)


def with_sum_pairs(
    result: LayerIO, weight: torch.Tensor, sum_weight: torch.Tensor
) -> tuple[LayerIO, torch.Tensor]:
    """The ``B`` pairs of ``result`` with weights ``weight``, then the same pairs with item 0's
    output gradients negated and weights ``sum_weight`` ``(B,)``: a structure's pair curvature
    ``w (J_1 - J_0)^T (J_1 - J_0)`` of the second ``B`` is ``sum_weight (J_1 + J_0)^T
    (J_1 + J_0)``, the curvature on each pair's sum of rewards."""
    grads = []
    for g in result.grads:
        flipped = g.reshape(-1, 2, *g.shape[1:]).clone()
        flipped[:, 0].neg_()
        grads.append(torch.cat([g, flipped.reshape(g.shape)]))
    acts = [torch.cat([a, a]) for a in result.acts]
    output = torch.cat([result.output, result.output])
    return LayerIO(output, acts, grads), torch.cat([weight, sum_weight])


def is_pair_backend(backend: Any) -> bool:
    """Whether ``backend`` (a backend class or instance) is bt_laplace's exact pair curvature,
    :class:`BradleyTerryGGN` or a subclass: the one rule the fit, the prior and a loaded
    posterior use."""
    cls = backend if isinstance(backend, type) else type(backend)
    return issubclass(cls, BradleyTerryGGN)


class _ZeroKron(Kron):
    """An all-zero :class:`Kron` whose addition is free: ``H + zero`` returns ``H`` itself.

    As a subclass overriding ``__radd__``, Python tries it before ``Kron.__add__``, so
    laplace-torch's ``self.H += H_batch`` allocates nothing per batch.
    """

    def __radd__(self, other: Kron) -> Kron:  # type: ignore[override]
        return other
