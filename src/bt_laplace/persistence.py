"""Saved state of a fitted laplace-torch posterior, written and read without executing code.

Shape legend: ``P`` posterior parameters.

A saved posterior is a folder with two files, so it can sit beside a Hugging Face model's
``save_pretrained`` files:

- ``bt_posterior.safetensors``: the tensors: the fitted curvature of its structure (``H`` for
  ``diag`` and ``full``; the Kronecker factors ``H_facs.i.j`` and their eigendecomposition
  ``eig.i.vectors.j`` / ``eig.i.values.j`` for ``kron``, so predictions are bit-identical
  without recomputing it), ``prior_precision``, ``prior_mean``, ``mean`` ``(P,)``, ``loss``;
- ``bt_posterior.json``: the configuration (format, structure and subset, laplace-torch class,
  temperature, backend by name and its settings, last layer name, the pair count), the names
  and shapes of the parameters the posterior covers, and a SHA-256 fingerprint of the weights
  of the model it was fitted on.

:func:`read_record` reads both with ``json`` and ``safetensors`` (neither can run code);
:func:`restore_laplace` rebuilds the laplace-torch object on the model passed in and refuses a
model whose parameter names, shapes or weights differ from the fingerprint unless told
otherwise. Each structure saves and restores its own curvature
(:meth:`~bt_laplace.structures.PosteriorStructure.saved_state`); this module holds no branch on
a structure's name. Below the posterior: :class:`~bt_laplace.RewardPosterior` adds its own
settings to the record (``save``, ``from_state``), and :mod:`bt_laplace.io` puts the two
together for users.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bt_laplace._layer_io import posterior_parameters
from bt_laplace._sharding import (
    check_shardable,
    full_value,
    has_sharded_parameters,
    parameter_vector,
    reshard,
)
from bt_laplace.choices import SubsetOfWeights
from bt_laplace.curvature import BradleyTerryGGN, is_pair_backend
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.structures import STRUCTURES, structure_class, subset_of_weights

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "TENSORS_FILE",
    "keep_fingerprint",
    "laplace_record",
    "read_record",
    "restore_laplace",
    "weights_fingerprint",
    "write_record",
]

FORMAT = "bt_laplace.reward_posterior/1"
TENSORS_FILE = "bt_posterior.safetensors"
CONFIG_FILE = "bt_posterior.json"


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and values of a module's parameters and
    buffers (hex). About 0.1 s per 100 MB of weights. A module sharded with FSDP2 has the
    fingerprint of the same module unsharded: each parameter is gathered in turn (a
    collective: call it on every rank)."""
    digest = hashlib.sha256()
    reshard(module)
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        data = full_value(t).cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _network(laplace: Any) -> nn.Module:
    """The network predictions run through: the pair model, also inside a last-layer
    posterior's ``FeatureExtractor``."""
    model = laplace.model
    return model.model if hasattr(model, "last_layer") else model


def _covered(laplace: Any) -> list[list[Any]]:
    """``[name, shape]`` of each parameter tensor the posterior covers, in its order."""
    reshard(_network(laplace))  # FSDP2: the shards, as the posterior lists them
    names = {id(p): n for n, p in _network(laplace).named_parameters()}
    return [[names.get(id(p), "?"), list(p.shape)] for p in posterior_parameters(laplace)]


def _backend_name(backend: type) -> str:
    return f"{backend.__module__}.{backend.__qualname__}"


def _backend_from_name(name: str) -> type:
    """Backends a saved posterior may name: bt_laplace's and laplace-torch's own (looked up in
    those two packages only, never imported from a name in the file)."""
    import laplace.curvature as lc

    known: dict[str, type] = {_backend_name(BradleyTerryGGN): BradleyTerryGGN}
    for attr in dir(lc):
        obj = getattr(lc, attr)
        if isinstance(obj, type):
            known[_backend_name(obj)] = obj
    if name not in known:
        raise ValueError(
            f"the saved posterior names backend {name!r}, which is neither bt_laplace's nor "
            "laplace-torch's; refit with one of those."
        )
    return known[name]


#: where :func:`keep_fingerprint` keeps a sharded network's fingerprint on its posterior
_KEPT = "bt_weights_fingerprint"


def keep_fingerprint(laplace: Any, fingerprint: str | None = None) -> None:
    """For a network sharded with FSDP2, take its :func:`weights_fingerprint` now (on every
    rank: a collective), or keep ``fingerprint`` if given, on ``laplace``: its record then
    needs no collective, so one rank alone can save it. Nothing for an unsharded network,
    whose fingerprint is taken when it is saved."""
    network = _network(laplace)
    if has_sharded_parameters(network):
        setattr(laplace, _KEPT, fingerprint or weights_fingerprint(network))


def laplace_record(laplace: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The configuration (JSON-able) and tensors that define a fitted laplace-torch posterior
    (the fingerprint kept by :func:`keep_fingerprint`, else that of the network now)."""
    la = laplace
    cls = structure_class(la)
    subset = subset_of_weights(la)
    kwargs = dict(la._backend_kwargs)
    kwargs.pop("last_layer", None)
    config: dict[str, Any] = {
        "format": FORMAT,
        "laplace_class": type(la).__name__,
        "subset_of_weights": subset.value,
        "hessian_structure": cls.name,
        "temperature": float(la.temperature),
        "n_data": int(la.n_data),
        "backend": _backend_name(la._backend_cls),
        "backend_kwargs": kwargs,
        "enable_backprop": bool(la.enable_backprop),
        "dict_key_x": la.dict_key_x,
        "dict_key_y": la.dict_key_y,
        "parameters": _covered(la),
        "fingerprint": getattr(la, _KEPT, None) or weights_fingerprint(_network(la)),
    }
    if subset is SubsetOfWeights.LAST_LAYER:
        config["last_layer_name"] = la.model._last_layer_name
        reduction = la.model.feature_reduction
        config["feature_reduction"] = None if reduction is None else str(reduction)
    for name in cls.saved_settings:
        value = getattr(la, name)
        config[name] = value if isinstance(value, (str, int, float)) else bool(value)
    tensors = cls.saved_state(la)
    for name in ("prior_precision", "prior_mean", "mean", "loss"):
        value = getattr(la, name)
        tensors[name] = torch.as_tensor(value).detach().reshape(-1)
    # safetensors stores row-major data: keep column-major matrices (eigh's eigenvectors) as
    # their transposes, so a loaded posterior multiplies with the same memory layout and its
    # predictions are bit-identical, not only equal to rounding
    column_major = [
        k
        for k, v in tensors.items()
        if v.ndim == 2 and not v.is_contiguous() and v.mT.is_contiguous()
    ]
    config["column_major"] = column_major
    tensors = {
        k: (v.mT if k in column_major else v).detach().contiguous().cpu()
        for k, v in tensors.items()
    }
    return config, tensors


def write_record(
    path: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> Path:
    """Write a record into the folder ``path`` (created if needed): ``config`` as JSON and
    ``tensors`` as safetensors (see the module doc).

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"`path` must be a folder (a saved posterior is two files), got the file {folder}; "
            "pass a folder, e.g. the one of model.save_pretrained."
        )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / TENSORS_FILE), metadata={"format": FORMAT})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_record(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The configuration and tensors of a folder written by :func:`write_record`, read with
    ``json`` and ``safetensors`` (neither runs code); refuses another format."""
    from safetensors.torch import load_file

    folder = Path(path)
    config_path, tensors_path = folder / CONFIG_FILE, folder / TENSORS_FILE
    if not config_path.is_file() or not tensors_path.is_file():
        raise FileNotFoundError(
            f"`path` must be a folder written by RewardPosterior.save, with {CONFIG_FILE} and "
            f"{TENSORS_FILE}; {folder} has "
            f"{sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'no such folder'}."
        )
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{config_path} has format {config.get('format')!r}, this bt_laplace reads "
            f"{FORMAT!r}; save it again with this version."
        )
    return config, load_file(str(tensors_path))


def restore_laplace(
    model: Any,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    strict: bool = True,
) -> Any:
    """The fitted laplace-torch posterior of a record from :func:`laplace_record`, rebuilt on
    ``model`` (refused when its parameters or, with ``strict``, its weights differ)."""
    if not isinstance(model, PairwiseRewardModel):
        raise TypeError(
            f"`model` must be the bt_laplace.PairwiseRewardModel the posterior was fitted on, "
            f"got {type(model).__name__}."
        )
    check_shardable(model)
    structure = STRUCTURES[config["hessian_structure"]]
    subset = config["subset_of_weights"]
    backend = _backend_from_name(config["backend"])
    kwargs: dict[str, Any] = {
        "backend": backend,
        "backend_kwargs": config["backend_kwargs"] or None,
        "temperature": config["temperature"],
        "enable_backprop": config["enable_backprop"],
        "dict_key_x": config["dict_key_x"],
        "dict_key_y": config["dict_key_y"],
    }
    if subset == SubsetOfWeights.LAST_LAYER:
        kwargs["last_layer_name"] = config["last_layer_name"]
        kwargs["feature_reduction"] = config["feature_reduction"]
    kwargs.update({k: config[k] for k in structure.saved_settings if k in config})
    la: Any = structure.build_laplace(
        model, subset, pair_backend=is_pair_backend(backend), **kwargs
    )
    # a record names the class it was fitted with; earlier versions built laplace-torch's
    # own classes, which the classes built now extend
    if config["laplace_class"] not in {c.__name__ for c in type(la).__mro__}:
        raise ValueError(
            f"the saved posterior is a {config['laplace_class']}, but its settings build a "
            f"{type(la).__name__} here; save and load with the same bt_laplace version."
        )
    keep_fingerprint(la, _check_model(la, config, strict))
    device, dtype = la._device, la._dtype
    column_major = set(config.get("column_major", ()))

    def get(name: str) -> torch.Tensor:
        # a copy: torch-allocated (aligned) memory, as the fitted tensors were, so that
        # matrix products round alike (BLAS kernels can differ on unaligned data)
        t = tensors[name].to(device=device, dtype=dtype, copy=True)
        return t.mT if name in column_major else t

    la.mean = parameter_vector(posterior_parameters(la), dtype)
    la.n_params, la.n_layers = la.mean.numel(), len(posterior_parameters(la))
    la.n_data = config["n_data"]
    state = {name: get(name) for name in tensors}  # each tensor copied once
    la.loss = state["loss"].reshape(())
    la.prior_mean = _scalar_or_vector(state["prior_mean"])
    la.prior_precision = _scalar_or_vector(state["prior_precision"])
    structure.restore_state(la, state)
    return la


def _scalar_or_vector(t: torch.Tensor) -> Any:
    return t.reshape(()) if t.numel() == 1 else t


def _check_model(la: Any, config: dict[str, Any], strict: bool) -> str | None:
    """Refuse a model that is not the one the posterior was fitted on, saying what differs;
    its fingerprint, when ``strict`` computed it."""
    network = _network(la)
    have, want = _covered(la), config["parameters"]
    if have != want:
        diff = [f"{w} saved, {h} here" for w, h in zip(want, have, strict=False) if w != h]
        if len(have) != len(want):
            diff.append(f"{len(want)} parameter tensors saved, {len(have)} here")
        raise ValueError(
            "`model` does not have the parameters the posterior covers: "
            + "; ".join(diff[:5])
            + ". Load onto the model (and last layer) it was fitted on."
        )
    if strict:
        found = weights_fingerprint(network)
        if found != config["fingerprint"]:
            raise ValueError(
                f"`model`'s weights differ from those the posterior was fitted on (fingerprint "
                f"{found[:12]}... here, {config['fingerprint'][:12]}... saved); load the "
                "fitted weights, or pass strict=False to use this curvature anyway."
            )
        return found
    return None
