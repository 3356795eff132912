"""Private: per-item inputs and output gradients of the linear layers holding posterior parameters.

For a single-output reward ``r`` and a linear layer ``z = W a + b`` inside it, the Jacobian of
``r`` with respect to ``W`` for one item is the rank-one matrix ``g a^T`` with
``g = dr/dz``, and with respect to ``b`` it is ``g``. One forward pass with hooks and one
backward pass of ``sum_items r`` give ``a`` ``(N, in)`` and ``g`` ``(N, out)`` for every item at
once (items in a batch do not interact in eval mode), which is all that curvature and
predictive variance need: no per-item Jacobian is ever formed.

Linear layers are ``nn.Linear`` (weight ``(out, in)``, ``z = a W^T + b``) and transformers'
``Conv1D`` (GPT-2 and its family: weight ``(in, out)``, ``z = a W + b``), whose weight Jacobian
is ``a g^T`` in its own layout. :func:`weight_factors` hands every weight's Jacobian out as
``u v^T`` in the layout of the parameter tensor (``u, v = g, a`` or ``a, g``), so that what is
built from it (diagonals, dense Jacobians, Kronecker factors) is in laplace-torch's parameter
order, the weight flattened row by row.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from laplace.baselaplace import ParametricLaplace
from laplace.lllaplace import LLLaplace
from torch import nn

from bt_laplace._dtypes import widen
from bt_laplace._sharding import reshard

__all__ = [
    "LayerIORecorder",
    "ParamSlot",
    "LayerIO",
    "LayerIOUnsupportedError",
    "backend_jacobians",
    "bias_jacobian",
    "is_linear_layer",
    "is_sequence",
    "item_chunks",
    "pair_split",
    "posterior_parameters",
    "weight_factors",
    "weight_jacobian",
]


def posterior_parameters(laplace: ParametricLaplace) -> list[torch.Tensor]:
    """The parameter tensors a laplace-torch posterior is over, in its order (last layer or
    all); for a model sharded with FSDP2, the registered shards (``DTensor``), whose shapes
    are the full ones (:mod:`bt_laplace._sharding`)."""
    reshard(laplace.model)
    if isinstance(laplace, LLLaplace):
        last_layer: Any = laplace.model.last_layer
        return [p for p in last_layer.parameters() if p.requires_grad]
    return list(laplace.params)


def pair_split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split per-item rows ``(2B, ...)``, ordered pair by pair, into items 0 and 1 ``(B, ...)``."""
    t = t.reshape(-1, 2, *t.shape[1:])
    return t[:, 0], t[:, 1]


def _conv1d_type() -> type | None:
    """transformers' ``Conv1D``, if transformers is loaded (a model holding one has loaded it;
    bt_laplace never imports transformers itself)."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return conv1d if isinstance(conv1d, type) else None


def _is_transposed(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer that stores its weight ``(in, out)`` (``Conv1D``)."""
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def is_linear_layer(module: nn.Module | None) -> bool:
    """Whether ``module`` is a linear layer the fast path takes: ``nn.Linear`` or
    transformers' ``Conv1D``."""
    return isinstance(module, nn.Linear) or (module is not None and _is_transposed(module))


class LayerIOUnsupportedError(NotImplementedError):
    """The model's forward does not fit the hook-based fast path (found while running it)."""


@dataclass(frozen=True)
class ParamSlot:
    """Where one posterior parameter tensor lives: layer index and ``"weight"`` or ``"bias"``;
    ``transposed`` for a weight stored ``(in, out)`` (``Conv1D``)."""

    layer: int
    kind: str
    numel: int
    transposed: bool = False


@dataclass(frozen=True)
class LayerIO:
    """Per-item quantities of one forward/backward pass.

    Attributes:
        output: Rewards ``(N,)`` at the MAP parameters (detached).
        acts: Per layer, input activations ``(N, in)``, or ``(N, L, in)`` for a layer applied
            to the ``L`` positions of a sequence.
        grads: Per layer, output gradients ``(N, out)`` or ``(N, L, out)``.
    """

    output: torch.Tensor
    acts: list[torch.Tensor]
    grads: list[torch.Tensor]


class LayerIORecorder:
    """Record ``a`` and ``g`` of the linear layers that hold the posterior parameters.

    Args:
        model: Module that contains every tensor in ``params``.
        params: The posterior's parameter tensors, in the posterior's order (for a model
            sharded with FSDP2: its registered shards, as after
            :func:`~bt_laplace._sharding.reshard`; the layer inputs and output gradients
            its forward hands the hooks are full, plain tensors).

    Attributes:
        supported: Whether every parameter is the weight or bias of an ``nn.Linear`` or a
            ``Conv1D``.
        reason: Why not, when ``supported`` is False.
        slots: One :class:`ParamSlot` per parameter, in order.
        layers: The distinct linear modules, in order of first appearance.
        items_first: Layers whose inputs ``(N, L, in)`` with ``L == N`` were confirmed to be
            items first (one extra backward pass, once per layer).
    """

    def __init__(self, model: nn.Module, params: Sequence[torch.Tensor]) -> None:
        self.model = model
        self.params = list(params)
        self.layers: list[nn.Module] = []
        self.slots: list[ParamSlot] = []
        self.reason = ""
        self.items_first: set[int] = set()
        reshard(model)  # FSDP2: the shards registered, as in `params`
        owner: dict[int, tuple[nn.Module | None, str]] = {}
        owners: dict[int, int] = {}
        for mod in model.modules():
            for kind, param in mod.named_parameters(recurse=False):
                owner.setdefault(id(param), (mod, kind))
                owners[id(param)] = owners.get(id(param), 0) + 1
        for p in params:
            if owners.get(id(p), 0) > 1:  # tied: the Jacobian sums over every layer using it
                self.reason = (
                    f"a posterior parameter of shape {tuple(p.shape)} is shared by "
                    f"{owners[id(p)]} layers (tied weights)"
                )
                break
            module, kind = owner.get(id(p), (None, ""))
            if not is_linear_layer(module):
                name = type(module).__name__ if module is not None else "an unknown module"
                path = next((n for n, m in model.named_modules() if m is module), None)
                where = f" {path!r}" if path else ""
                self.reason = (
                    f"a posterior parameter of shape {tuple(p.shape)} belongs to {name}{where}, "
                    "not a linear layer (nn.Linear, Conv1D, or a LoRA adapter's lora_A/lora_B)"
                )
                break
            assert module is not None
            if module not in self.layers:
                self.layers.append(module)
            transposed = kind == "weight" and _is_transposed(module)
            self.slots.append(ParamSlot(self.layers.index(module), kind, p.numel(), transposed))
        self.supported = not self.reason

    @contextmanager
    def _only_posterior_grads(self) -> Iterator[None]:
        """Switch off ``requires_grad`` of non-posterior parameters so no graph is built there."""
        reshard(self.model)  # FSDP2: the shards registered, as in `params`
        ids = {id(p) for p in self.params}
        frozen = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def run(self, forward: Callable[[], torch.Tensor]) -> LayerIO:
        """Run ``forward`` (returning rewards, any shape, one per item) and collect ``a``, ``g``.

        Raises:
            LayerIOUnsupportedError: If a layer is called twice or sees inputs that are not 2-D.
        """
        inputs: list[list[torch.Tensor]] = [[] for _ in self.layers]
        outputs: list[list[torch.Tensor]] = [[] for _ in self.layers]

        def make_hook(i: int) -> Callable[..., None]:
            def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
                inputs[i].append(inp[0])
                outputs[i].append(out)

            return hook

        handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(self.layers)]
        try:
            with torch.enable_grad(), self._only_posterior_grads():
                reward = forward().reshape(-1)
                n = reward.shape[0]
                for i, (ins, outs) in enumerate(zip(inputs, outputs, strict=True)):
                    if len(outs) != 1 or ins[0].ndim < 2 or ins[0].shape[0] != n:
                        shapes = [tuple(t.shape) for t in ins]
                        raise LayerIOUnsupportedError(
                            f"linear layer {i} ({self.layers[i]}) was called {len(outs)} times "
                            f"with inputs {shapes}; the fast path needs one call per forward "
                            f"on inputs (N, in) or (N, ..., in) with N = {n} items first"
                        )
                # (N, L, in) with L == N could be sequence-first (L, N, in): then the reward of
                # item 0 reaches every row, where items-first it reaches row 0 only
                # (checked once per layer: the layout is the model's, not the batch's)
                ambiguous = [
                    i
                    for i, ins in enumerate(inputs)
                    if n > 1 and n in ins[0].shape[1:-1] and i not in self.items_first
                ]
                outs = [o[0] for o in outputs]
                grads = torch.autograd.grad(reward.sum(), outs, retain_graph=bool(ambiguous))
                if ambiguous:
                    first = torch.autograd.grad(reward[0], [outs[i] for i in ambiguous])
                    for i, g in zip(ambiguous, first, strict=True):
                        if bool(g[1:].ne(0).any()):
                            raise LayerIOUnsupportedError(
                                f"linear layer {i} ({self.layers[i]}) sees inputs "
                                f"{tuple(inputs[i][0].shape)} whose first axis is not the "
                                f"{n} items (the reward of item 0 depends on other rows)"
                            )
                    self.items_first.update(ambiguous)
        finally:
            for h in handles:
                h.remove()
        # sequences (N, ..., in): positions flattened into one axis, (N, L, in)
        # a half-precision model is read in its own dtype; what is summed from it is float32
        acts = [widen(_items_first(ins[0].detach())) for ins in inputs]
        grads_ = [widen(_items_first(g.detach())) for g in grads]
        return LayerIO(widen(reward.detach()), acts, grads_)

    def try_run(self, forward: Callable[[], torch.Tensor]) -> LayerIO | None:
        """:meth:`run`, or None (and ``supported`` set to False) if the forward does not fit."""
        if not self.supported:
            return None
        try:
            return self.run(forward)
        except LayerIOUnsupportedError as err:
            self.supported, self.reason = False, str(err)
            return None

    def jacobian(self, result: LayerIO) -> torch.Tensor:
        """Per-item Jacobian ``(N, P)`` rebuilt from ``a`` and ``g`` (for small ``P`` only)."""
        blocks = []
        for slot in self.slots:
            g, a = result.grads[slot.layer], result.acts[slot.layer]
            if slot.kind == "weight":
                blocks.append(weight_jacobian(*weight_factors(slot, g, a)).flatten(1))
            else:
                blocks.append(bias_jacobian(g))
        return torch.cat(blocks, dim=1)


def _items_first(t: torch.Tensor) -> torch.Tensor:
    return t if t.ndim == 2 else t.reshape(t.shape[0], -1, t.shape[-1])


def is_sequence(t: torch.Tensor) -> bool:
    """Whether taps ``a`` or ``g`` are per position ``(N, L, .)`` rather than per item."""
    return t.ndim == 3


def weight_factors(
    slot: ParamSlot, g: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sides ``(u, v)`` of a weight's per-item Jacobian ``u v^T`` in the layout of the
    weight tensor: ``(g, a)`` for an ``nn.Linear`` weight ``(out, in)``, ``(a, g)`` for a
    ``Conv1D`` weight ``(in, out)``. Everything built from ``u`` as the rows and ``v`` as the
    columns is in laplace-torch's order, the weight flattened row by row."""
    return (a, g) if slot.transposed else (g, a)


def weight_jacobian(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-item Jacobian of the reward with respect to a weight, ``(N, out, in)``: ``g a^T``,
    or ``sum_t g_t a_t^T`` over the positions of a layer applied to sequences (for a
    ``Conv1D`` weight, pass :func:`weight_factors`: ``(N, in, out)``)."""
    if g.ndim == 2:
        return g[:, :, None] * a[:, None, :]
    return g.transpose(1, 2) @ a


def bias_jacobian(g: torch.Tensor) -> torch.Tensor:
    """Per-item Jacobian with respect to a bias ``(N, out)``: ``g``, or ``sum_t g_t``."""
    return g if g.ndim == 2 else g.sum(1)


def item_chunks(n: int, per_item: int, budget: int = 2**24) -> list[slice]:
    """Slices of ``n`` items so that a chunk holds about ``budget`` numbers of ``per_item``."""
    step = max(1, budget // max(1, per_item))
    return [slice(i, i + step) for i in range(0, n, step)]


def backend_jacobians(
    backend: Any, x: Any, *, last_layer: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item Jacobians from a laplace-torch backend, the slow but general path.

    Returns ``(J (N, K, P), f (N, K))`` for an input whose model output is ``(N, K)``
    (``K = 1`` for items, ``K = 2`` for pairs), for all weights or the last layer.
    """
    with torch.enable_grad():
        if not last_layer:
            jac, f = backend.jacobians(x)
            return widen(jac.detach()), widen(f.detach())
        jac, f = backend.last_layer_jacobians(x)  # (N * K, 1, P) from per-item features
    return widen(jac.detach().reshape(f.shape[0], -1, jac.shape[-1])), widen(f.detach())
