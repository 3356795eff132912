"""Save a fitted reward posterior and load it in another process, without executing code.

A saved posterior is a folder with two files, so it can sit beside a Hugging Face model's
``save_pretrained`` files: ``bt_posterior.safetensors`` (the tensors) and ``bt_posterior.json``
(the configuration and a fingerprint of the model's weights); what they hold:
:mod:`bt_laplace.persistence`. :func:`load_reward_posterior` reads both with ``json`` and
``safetensors`` (neither can run code), rebuilds the posterior on the model passed in, and
refuses a model whose parameter names, shapes or weights differ from the fingerprint unless
told otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bt_laplace.persistence import (
    CONFIG_FILE,
    FORMAT,
    TENSORS_FILE,
    read_record,
    weights_fingerprint,
)
from bt_laplace.posterior import RewardPosterior

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "TENSORS_FILE",
    "load_reward_posterior",
    "posterior_record",
    "rebuild_posterior",
    "save_reward_posterior",
    "weights_fingerprint",
]


def save_reward_posterior(posterior: RewardPosterior, path: str | Path) -> Path:
    """Write ``posterior`` into the folder ``path``: :meth:`RewardPosterior.save`.

    Returns:
        The folder.
    """
    return posterior.save(path)


def load_reward_posterior(
    path: str | Path,
    model: Any,
    *,
    strict: bool = True,
    batch_size: int | None = None,
    tokenizer: Any = None,
) -> RewardPosterior:
    """Load a posterior saved by :meth:`~bt_laplace.RewardPosterior.save` onto ``model``.

    Args:
        path: The folder given to ``save``.
        model: The :class:`~bt_laplace.PairwiseRewardModel` the posterior was fitted on (same
            parameter names, shapes and weights).
        strict: Refuse a model whose weights differ from the saved fingerprint (names and
            shapes must always match). ``False`` loads anyway: the curvature then belongs to
            other weights.
        batch_size: Items per forward pass at prediction time (default: as saved).
        tokenizer: The model's tokenizer, to query with texts
            (:meth:`~bt_laplace.RewardPosterior.set_tokenizer`, with the ``max_length``,
            ``truncation`` and ``append_eos`` the posterior was saved with); a tokenizer is
            not saved with the posterior (``tokenizer.save_pretrained`` does that).

    Returns:
        The :class:`~bt_laplace.RewardPosterior`, with predictions bit-identical to the saved
        one's on the same machine.

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> import bt_laplace as btl
        >>> _ = torch.manual_seed(0)
        >>> model = btl.PairwiseRewardModel(nn.Sequential(nn.Linear(3, 4), nn.Tanh(),
        ...                                               nn.Linear(4, 1)))
        >>> rows = [{"x0": torch.randn(3), "x1": torch.randn(3), "label": 1} for _ in range(8)]
        >>> post = btl.fit_reward_posterior(model, btl.preference_dataloader(rows, batch_size=4))
        >>> folder = post.save(tempfile.mkdtemp())
        >>> again = btl.load_reward_posterior(folder, model)
        >>> x = torch.randn(5, 3)
        >>> bool((again(x).variance == post(x).variance).all())
        True
    """
    config, tensors = read_record(path)
    posterior = RewardPosterior.from_state(
        model, config, tensors, strict=strict, batch_size=batch_size
    )
    if tokenizer is not None:
        posterior.set_tokenizer(tokenizer, **config.get("text", {}))
    return posterior


#: the configuration and tensors that define a fitted posterior (:meth:`RewardPosterior.state`)
posterior_record = RewardPosterior.state
#: the posterior of a record from :func:`posterior_record` (:meth:`RewardPosterior.from_state`)
rebuild_posterior = RewardPosterior.from_state
