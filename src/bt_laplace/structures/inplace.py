"""laplace-torch's posterior classes, reading the user's model in place and in full precision.

Two narrow changes to laplace-torch 0.3's classes, and nothing else:

- **No copy of the network.** ``LLLaplace.__init__`` deep-copies the model into its
  ``FeatureExtractor``: a whole second reward model (28 GB for a 7B model in float32) and a
  last-layer posterior that silently kept answering with the old weights once the model was
  trained further. :class:`InPlaceLLLaplace` builds the same ``FeatureExtractor`` around the
  model itself, and :class:`InPlaceFeatureExtractor` hooks the last layer only while it reads
  features (laplace-torch's leaves a hook on the layer for good, which would hold a batch of
  features and make the user's model unpicklable).
- **Half-precision models.** laplace-torch keeps its curvature, mean and prior in the dtype of
  the model's first parameter: bfloat16 for a bf16 reward model, where eigendecompositions do
  not run and sums of many pairs lose every digit. Here that dtype is the model's, widened to
  float32 when it is half precision (:func:`compute_dtype`); the model itself is never cast.
  Layer inputs and output gradients are read in the model's dtype and widened per batch
  (:mod:`bt_laplace._layer_io`).

Each class keeps laplace-torch's name with a ``BT`` prefix and its own ``_key`` (laplace-torch's
``Laplace`` factory maps keys to classes; inherited keys would make it pick these classes).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch
from laplace.baselaplace import DiagLaplace, FullLaplace, KronLaplace, ParametricLaplace
from laplace.lllaplace import DiagLLLaplace, FullLLLaplace, KronLLLaplace, LLLaplace
from laplace.utils import FeatureExtractor
from torch import nn
from torch.utils.data import DataLoader

from bt_laplace._dtypes import compute_dtype, model_dtype
from bt_laplace._layer_io import posterior_parameters
from bt_laplace._sharding import is_sharded, parameter_vector

__all__ = [
    "BTDiagLLLaplace",
    "BTDiagLaplace",
    "BTFullLLLaplace",
    "BTFullLaplace",
    "BTKronLLLaplace",
    "BTKronLaplace",
    "FullPrecisionLaplace",
    "InPlaceFeatureExtractor",
    "InPlaceLLLaplace",
]


class FullPrecisionLaplace(ParametricLaplace):
    """laplace-torch's posterior with its curvature, mean and prior in at least float32.

    ``_dtype`` is what every laplace-torch tensor (``H``, ``mean``, ``prior_precision``) is
    made in; the mean is widened once after the fit.

    A model sharded with FSDP2 (``DTensor`` parameters, :mod:`bt_laplace._sharding`): the
    mean is the vector of the full parameter values, gathered from every rank, and the same
    on every rank (laplace-torch's ``parameters_to_vector`` refuses shards).
    """

    @property
    def _dtype(self) -> torch.dtype:
        return compute_dtype(model_dtype(self.model))

    def fit(
        self, train_loader: DataLoader, override: bool = True, progress_bar: bool = False
    ) -> None:
        covered = posterior_parameters(self)
        if not is_sharded(covered):
            super().fit(train_loader, override=override, progress_bar=progress_bar)
            self.mean = torch.as_tensor(self.mean).to(self._dtype)
            return
        # laplace-torch reads `params` for the shapes of H and a mean it sets before the
        # pass: shapes without values, so that no parameter is gathered there
        params, self.params = self.params, [torch.empty(p.shape, device="meta") for p in covered]
        try:
            self._fit_sharded(train_loader, override=override, progress_bar=progress_bar)
        finally:
            self.params = params
        self.mean = parameter_vector(covered, self._dtype)

    def _fit_sharded(self, train_loader: DataLoader, override: bool, progress_bar: bool) -> None:
        """laplace-torch's ``fit`` of this class for a model with sharded parameters."""
        super().fit(train_loader, override=override, progress_bar=progress_bar)


class InPlaceFeatureExtractor(FeatureExtractor):
    """laplace-torch's ``FeatureExtractor`` without a lasting hook: the last layer's input is
    recorded only inside :meth:`forward_with_features`, and dropped when it returns."""

    def set_last_layer(self, last_layer_name: str) -> None:
        layer = dict(self.model.named_modules()).get(last_layer_name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(
                f"last_layer_name={last_layer_name!r} names "
                f"{'no module' if layer is None else type(layer).__name__} of the model; "
                "a last-layer posterior needs an nn.Linear reward head."
            )
        self._last_layer_name = last_layer_name
        self._modules.pop("last_layer", None)
        object.__setattr__(self, "last_layer", layer)

    def find_last_layer(self, x: torch.Tensor | MutableMapping[str, Any]) -> torch.Tensor:
        """laplace-torch's search (the leaf module whose first call comes last), without
        leaving its hooks on the modules that the forward did not call, and holding the input
        of the current candidate only (laplace-torch keeps every module's: a batch of every
        activation of the network, 76 MB for a 224 MB bf16 Llama and 8 pairs)."""
        if self.last_layer is not None:
            raise ValueError("Last layer is already known.")
        modules = dict(self.model.named_modules())
        if len(modules) <= 2:
            raise ValueError("The model only has one module.")
        seen: set[str] = set()
        candidate: list[tuple[str, torch.Tensor | None]] = []

        def record(name: str, leaf: bool) -> Any:
            def hook(_m: nn.Module, inp: tuple[Any, ...], _out: Any) -> None:
                if name in seen:
                    return
                seen.add(name)
                if leaf:
                    first = inp[0] if inp else None
                    candidate[:] = [
                        (name, first.detach() if isinstance(first, torch.Tensor) else None)
                    ]

            return hook

        handles = [
            m.register_forward_hook(record(n, not list(m.children()))) for n, m in modules.items()
        ]
        try:
            out = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        if not candidate:
            raise ValueError("Something went wrong (all modules have children).")
        name, features = candidate[0]
        self.set_last_layer(name)
        if features is not None:
            self._features[name] = features
        return out

    def forward_with_features(
        self, x: torch.Tensor | MutableMapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        handle = None
        if self.last_layer is not None:
            handle = self.last_layer.register_forward_hook(self._get_hook(self._last_layer_name))
        try:
            return super().forward_with_features(x)
        finally:
            if handle is not None:
                handle.remove()
            self._features.clear()


class InPlaceLLLaplace(FullPrecisionLaplace, LLLaplace):
    """laplace-torch's ``LLLaplace`` over the model itself (``LLLaplace.__init__`` with
    ``FeatureExtractor(model)`` in place of ``FeatureExtractor(deepcopy(model))``)."""

    def __init__(
        self,
        model: nn.Module,
        likelihood: Any,
        sigma_noise: float | torch.Tensor = 1.0,
        prior_precision: float | torch.Tensor = 1.0,
        prior_mean: float | torch.Tensor = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        feature_reduction: Any = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        backend: Any = None,
        last_layer_name: str | None = None,
        backend_kwargs: dict[str, Any] | None = None,
        asdl_fisher_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if asdl_fisher_kwargs is not None:
            raise ValueError("Last-layer Laplace does not support asdl_fisher_kwargs.")
        self.H = None
        # KronLLLaplace sets `damping` before this call, and KronLaplace.__init__ resets it to
        # False (laplace-torch 0.3 loses KronLLLaplace(damping=True)); keep what was set
        damping = self.__dict__.get("damping")
        # LLLaplace's parent (ParametricLaplace and the structure's class), as LLLaplace calls it
        super(LLLaplace, self).__init__(
            model,
            likelihood,
            sigma_noise=sigma_noise,
            prior_precision=1.0,
            prior_mean=0.0,
            temperature=temperature,
            enable_backprop=enable_backprop,
            dict_key_x=dict_key_x,
            dict_key_y=dict_key_y,
            backend=backend,
            backend_kwargs=backend_kwargs,
        )
        if damping is not None:
            self.damping = damping
        self.model = InPlaceFeatureExtractor(
            model,
            last_layer_name=last_layer_name,
            enable_backprop=enable_backprop,
            feature_reduction=feature_reduction,
        )
        self.mean: Any
        if self.model.last_layer is None:
            self.mean = None
            self.n_params = None
            self.n_layers = None
            self._prior_precision = prior_precision
            self._prior_mean = prior_mean
        else:
            self._size_last_layer(prior_precision, prior_mean)
            self.mean = self.prior_mean
        self._backend_kwargs["last_layer"] = True
        self._last_layer_name = last_layer_name

    def _size_last_layer(self, prior_precision: Any, prior_mean: Any) -> None:
        """Sizes, prior and ``H`` for the known last layer, from its parameters' shapes
        (laplace-torch flattens their values, which shards of a sharded model refuse)."""
        layer: Any = self.model.last_layer
        params = list(layer.parameters())
        self.n_params, self.n_layers = sum(p.numel() for p in params), len(params)
        self.prior_precision = prior_precision
        self.prior_mean = prior_mean
        self._init_H()
        # laplace-torch's base class collected every trainable parameter of the model in
        # `params`, and its fit flattens them into one vector before LLLaplace.fit replaces it
        # with the last layer's: a transient copy of the network (67 MB for a 134 MB bf16
        # model); a last-layer posterior covers its last layer only
        self.params = [p for p in params if p.requires_grad]

    def fit(
        self, train_loader: DataLoader, override: bool = True, progress_bar: bool = False
    ) -> None:
        if self.model.last_layer is None:  # LLLaplace.fit's search, done before it
            self.model.eval()
            self.data = next(iter(train_loader))
            self._find_last_layer(self.data)
            self._size_last_layer(self._prior_precision, self._prior_mean)
        super().fit(train_loader, override=override, progress_bar=progress_bar)

    def _fit_sharded(self, train_loader: DataLoader, override: bool, progress_bar: bool) -> None:
        """``LLLaplace.fit`` without its ``parameters_to_vector`` of the last layer (which
        refuses shards; the mean is set by :meth:`FullPrecisionLaplace.fit`)."""
        if not override:
            raise ValueError("Last-layer Laplace approximations do not support `override=False`.")
        self.model.eval()
        super(LLLaplace, self).fit(train_loader, override=override, progress_bar=progress_bar)


class BTDiagLaplace(FullPrecisionLaplace, DiagLaplace):
    """laplace-torch's ``DiagLaplace`` in at least float32."""

    _key = ("bt_laplace", "all_diag")


class BTFullLaplace(FullPrecisionLaplace, FullLaplace):
    """laplace-torch's ``FullLaplace`` in at least float32."""

    _key = ("bt_laplace", "all_full")


class BTKronLaplace(FullPrecisionLaplace, KronLaplace):
    """laplace-torch's ``KronLaplace`` (its own Kronecker factors) in at least float32."""

    _key = ("bt_laplace", "all_kron_laplace")


class BTDiagLLLaplace(DiagLLLaplace, InPlaceLLLaplace):
    """laplace-torch's ``DiagLLLaplace`` over the model in place, in at least float32."""

    _key = ("bt_laplace", "last_layer_diag")


class BTFullLLLaplace(FullLLLaplace, InPlaceLLLaplace):
    """laplace-torch's ``FullLLLaplace`` over the model in place, in at least float32."""

    _key = ("bt_laplace", "last_layer_full")


class BTKronLLLaplace(KronLLLaplace, InPlaceLLLaplace):
    """laplace-torch's ``KronLLLaplace`` (its own factors) over the model in place, in at
    least float32."""

    _key = ("bt_laplace", "last_layer_kron_laplace")
