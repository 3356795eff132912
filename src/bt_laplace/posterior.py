"""A fitted reward posterior, queried like a regression model.

Shape legend: ``B`` pairs or items, ``2`` the two items of a pair (index 0 first, index 1
second), ``*item`` one item, ``S`` samples.

:class:`RewardPosterior` (built by :func:`~bt_laplace.fit_reward_posterior`, or
:func:`~bt_laplace.load_reward_posterior`) answers queries on tensors or token dicts: reward
mean and variance per item, preference probabilities per pair from the joint 2x2 Gaussian of
the two rewards, rewards relative to a reference, penalized rewards and joint samples; memory
stays within ``batch_size`` items, and queries check their inputs and that the model's weights
are those it was fitted on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from laplace.baselaplace import ParametricLaplace
from typing_extensions import Unpack

from bt_laplace._checks import (
    check_positive_int,
    group_index,
    n_rows,
)
from bt_laplace._distributed import Processes
from bt_laplace._dtypes import model_dtype
from bt_laplace._querying import WeightsGuard, autograd_query, finite_variance, per_batch
from bt_laplace._sharding import check_sharded_batch_counts
from bt_laplace.bradley_terry import preference_probability
from bt_laplace.choices import LinkApprox
from bt_laplace.inputs import QueryReader, split_rows
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.penalties import RewardPenalty
from bt_laplace.persistence import laplace_record, restore_laplace, write_record
from bt_laplace.predictive import Predictive
from bt_laplace.prior import PriorSetting, reset_prior_precision
from bt_laplace.prior.gridsearch import pair_nll_sum
from bt_laplace.text import TextKeywords, TextOptions, TextPairCollator

__all__ = ["RewardPrediction", "RewardPosterior"]


class RewardPrediction(NamedTuple):
    """Predictive mean and variance of rewards, each ``(B,)``; unpacks as a tuple."""

    mean: torch.Tensor
    variance: torch.Tensor


class RewardPosterior:
    """A fitted Laplace posterior over a Bradley-Terry reward model.

    Built by :func:`fit_reward_posterior`. Predictions use the linearized (GLM) predictive of
    the underlying laplace-torch object, computed without per-item Jacobians; they carry no
    observation noise.

    Args:
        laplace: The fitted laplace-torch object.
        model: The :class:`~bt_laplace.PairwiseRewardModel` it was fitted on.
        batch_size: Items per forward pass at prediction time (bounds memory).

    Example:
        >>> import torch
        >>> from bt_laplace.testing import tiny_posterior
        >>> post = tiny_posterior(hessian_structure="diag")  # fit_reward_posterior's result
        >>> mean, variance = post(torch.randn(5, 3))
        >>> mean.shape, variance.shape
        (torch.Size([5]), torch.Size([5]))
        >>> post.preference_probability(torch.randn(4, 2, 3)).shape
        torch.Size([4])
    """

    def __init__(
        self, laplace: ParametricLaplace, model: PairwiseRewardModel, *, batch_size: int = 4096
    ) -> None:
        if not getattr(laplace, "n_data", 0):
            raise ValueError(
                f"`laplace` ({type(laplace).__name__}) is not fitted, so it holds only the "
                "prior; build the posterior with bt_laplace.fit_reward_posterior, or call "
                "laplace.fit(loader) first."
            )
        self.laplace = laplace
        self.model = model
        self.batch_size = check_positive_int("batch_size", batch_size)
        #: mean and covariances from layer inputs and output gradients (the query engine)
        self.predictive = Predictive(laplace)
        #: held by every query (they share hooks on one model); hold it to run several
        #: queries as one, e.g. a server's scoring step
        self.lock = threading.RLock()
        #: refuses queries once the model's weights changed
        self.weights = WeightsGuard(model)
        #: shape of one real-valued item the posterior was fitted on (None: not recorded)
        self.item_shape: tuple[int, ...] | None = None
        #: the factor the default fit scaled the exact evidence's prior by so that this
        #: block-diagonal posterior gives held-out items the exact posterior's variance
        #: (None: not calibrated, docs/results/prior_sweep.md)
        self.prior_calibration: float | None = None
        #: turns texts into token batches (set by :meth:`set_tokenizer`, or taken from a
        #: :func:`~bt_laplace.text_preference_dataloader` by the fit)
        self.text_collator: Any = None

    # ------------------------------------------------------------------ saving
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The configuration (JSON-able) and tensors that define this posterior: the
        laplace-torch posterior's record (:func:`~bt_laplace.persistence.laplace_record`) and
        the settings of its queries (``batch_size``, ``item_shape``, how texts are read)."""
        config, tensors = laplace_record(self.laplace)
        config["batch_size"] = self.batch_size
        config["item_shape"] = None if self.item_shape is None else list(self.item_shape)
        if self.text_collator is not None:  # how queries read texts (not the tokenizer)
            config["text"] = self.text_collator.options.as_config()
        return config, tensors

    @classmethod
    def from_state(
        cls,
        model: PairwiseRewardModel,
        config: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        *,
        strict: bool = True,
        batch_size: int | None = None,
    ) -> RewardPosterior:
        """The posterior of a :meth:`state`, rebuilt on ``model`` (refused when its
        parameters or, with ``strict``, its weights differ from those it was fitted on)."""
        la = restore_laplace(model, config, tensors, strict=strict)
        posterior = cls(
            la, model, batch_size=config["batch_size"] if batch_size is None else batch_size
        )
        shape = config.get("item_shape")
        posterior.item_shape = None if shape is None else tuple(shape)
        return posterior

    def save(self, path: str | Path) -> Path:
        """Write the posterior into the folder ``path`` as safetensors plus a small JSON file
        (beside a Hugging Face model's ``save_pretrained`` files, if you like); load it with
        :func:`~bt_laplace.load_reward_posterior`. See :mod:`bt_laplace.io`.

        Returns:
            The folder.
        """
        return write_record(path, *self.state())

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the model plus the saved record, rebuilt on unpickling (laplace-torch's
        last-layer objects hold local hooks that do not pickle), e.g. to send the posterior
        to a worker process. For files, use :meth:`save`: loading a pickle runs code."""
        config, tensors = self.state()
        return (
            type(self).from_state,
            (self.model, config, tensors),
            {"text_collator": self.text_collator},
        )

    def __repr__(self) -> str:
        la = self.laplace
        return (
            f"RewardPosterior({type(la).__name__}, n_params={la.n_params}, "
            f"prior_precision={la.prior_precision.detach().cpu().tolist()})"
        )

    # ------------------------------------------------------------------ texts
    def set_tokenizer(
        self,
        tokenizer: Any,
        *,
        options: TextOptions | None = None,
        **text: Unpack[TextKeywords],
    ) -> RewardPosterior:
        """Let every query take texts: items as strings, message lists or TRL
        prompt-completion rows (``{"prompt", "completion"}``), pairs as TRL preference rows
        (``{"prompt", "chosen", "rejected"}``: item 0 the rejected, item 1 the chosen text) or
        ``(text_0, text_1)`` tuples (:mod:`bt_laplace.inputs`). Texts are prepared as the
        training pairs were (:class:`~bt_laplace.TextPairCollator`: eos appended, prompt
        prepended, chat template). A fit on :func:`~bt_laplace.text_preference_dataloader`
        sets this itself.

        Args:
            tokenizer: The tokenizer the model was trained with.
            options: How texts become token ids (:class:`~bt_laplace.text.TextOptions`).
            **text: Its fields as keywords instead (``max_length``, ``truncation``,
                ``append_eos``).

        Returns:
            The posterior itself.
        """
        self.text_collator = TextPairCollator(tokenizer, options=TextOptions.of(options, **text))
        return self

    @property
    def reader(self) -> QueryReader:
        """The reader of this posterior's query inputs (tensors, token dicts, texts), with its
        dtype, device, :attr:`item_shape` and :attr:`text_collator`: ``post.reader.pairs(x)``
        gives the checked pairs a query on ``x`` would use."""
        la = self.laplace
        dtype = model_dtype(self.model)  # real-valued inputs in the model's own dtype
        return QueryReader(self.model, dtype, la._device, self.item_shape, self.text_collator)

    # ------------------------------------------------------------------ queries
    @autograd_query
    def __call__(self, x: Any) -> RewardPrediction:
        """Predictive mean and variance of the reward of each item.

        Args:
            x: Items ``(B, *item)``: a tensor, a token dict ``input_ids (B, L)``, or texts
                given a tokenizer (:meth:`set_tokenizer`).

        Returns:
            :class:`RewardPrediction` of ``mean`` ``(B,)`` and ``variance`` ``(B,)``.
        """
        x = self.reader.items(x)
        self.laplace.model.eval()
        mean, variance = per_batch(self.predictive.item_moments, x, self.batch_size)
        return RewardPrediction(mean, finite_variance(variance))

    predict = __call__

    @autograd_query
    def pair_moments(self, x: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Joint moments of the two rewards of each pair.

        Args:
            x: Pairs ``(B, 2, *item)``.

        Returns:
            ``(mean (B, 2), variance (B, 2), covariance (B,))``.
        """
        x = self.reader.pairs(x)
        self.laplace.model.eval()
        size = max(1, self.batch_size // 2)
        mean, var, cov = per_batch(self.predictive.pair_moments, x, size)
        dtype = self.laplace._dtype
        return mean.to(dtype), finite_variance(var.to(dtype)), cov.to(dtype)

    @autograd_query
    def difference_moments(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``(B,)`` of the reward difference ``r(x_1) - r(x_0)`` of each pair
        of ``x`` ``(B, 2, *item)``, in float64 on the fast path: the variance
        ``S_00 + S_11 - 2 S_01`` cancels, and differencing float32 pair moments loses it for
        near-duplicate items."""
        x = self.reader.pairs(x)
        self.laplace.model.eval()
        size = max(1, self.batch_size // 2)
        mean, var = per_batch(self.predictive.difference_moments, x, size)
        return mean, var

    def preference_probability(
        self,
        x: Any,
        *,
        link_approx: str = "quadrature",
        n_samples: int = 20_000,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Posterior probability that item 1 of each pair is preferred over item 0.

        Uses the full 2x2 covariance of the two rewards through the variance of their
        difference, ``var(r_1 - r_0) = S_00 + S_11 - 2 S_01``:
        ``E[sigmoid(f)]`` for ``f ~ N(dmu, var(r_1 - r_0))`` by deterministic quadrature
        (within 1e-4 of a 10^6-draw Monte Carlo in the tests) for
        ``link_approx="quadrature"`` (default;
        :func:`~bt_laplace.bradley_terry.quadrature_preference_probability`),
        ``sigmoid(dmu / sqrt(1 + pi / 8 * var(r_1 - r_0)))`` for ``"probit"`` (within about
        0.02 of it), or the Monte Carlo average of ``sigmoid`` over ``n_samples`` draws for
        ``"mc"``.

        Args:
            x: Pairs ``(B, 2, *item)``.
            link_approx: ``"quadrature"``, ``"probit"`` or ``"mc"``.
            n_samples: Samples for ``"mc"``.
            generator: Random generator for ``"mc"``.

        Returns:
            Probabilities ``(B,)``.
        """
        link = LinkApprox.check("link_approx", link_approx)
        if link is LinkApprox.MC:
            n_samples = check_positive_int("n_samples", n_samples)
        # the variance of the difference cancels (v0 + v1 - 2 cov): it comes in float64
        mean_diff, var_diff = self.difference_moments(x)
        p = preference_probability(
            mean_diff, var_diff, link, n_samples=n_samples, generator=generator
        )
        return p.to(self.laplace._dtype)

    @autograd_query
    def relative_reward(
        self, x: Any, reference: Any = "group", *, groups: Any = None
    ) -> RewardPrediction:
        """Mean and variance of each item's reward relative to the mean reward of a reference.

        Bradley-Terry pairs identify rewards only up to a constant (and, when every pair shares
        a prompt, up to a constant per prompt), so the variance of ``post(x)`` carries the
        prior's uncertainty about that offset, the same for every item. The variance of
        ``r(x_n) - mean_m r(ref_m)`` drops what is common to the items and their reference and
        keeps what sets an item apart from it: the uncertainty to rank candidates by.

        Args:
            x: Items ``(B, *item)`` (a token dict, or texts given a tokenizer).
            reference: ``"group"`` (default): the items of ``x`` themselves, e.g. the ``n``
                candidate responses to one prompt in best-of-n (with ``groups``: the items of
                each item's own group); or reference items ``(M, *item)``, e.g. responses the
                model was trained on for that prompt.
            groups: With ``reference="group"``, the group (prompt) of each item: ``None`` (one
                group), integer ids ``(B,)`` or a list of ``B`` hashables (e.g. the prompts),
                so that one call over many prompts' candidates gives per-prompt relative
                rewards.

        Returns:
            :class:`RewardPrediction` of ``mean`` ``(B,)`` (``r(x_n)`` minus the reference's
            mean reward) and ``variance`` ``(B,)``.
        """
        x = self.reader.items(x)
        ref = self.reader.references(reference, x, groups)
        self.laplace.model.eval()
        if groups is not None:
            index, keys = group_index(groups, n_rows(x))
            mean, variance = self.predictive.relative_moments_by_group(
                x, index, len(keys), self.batch_size
            )
            return RewardPrediction(mean, finite_variance(variance))
        refs = None if ref is None else split_rows(ref, self.batch_size)
        mean, variance = self.predictive.relative_moments(split_rows(x, self.batch_size), refs)
        return RewardPrediction(mean, finite_variance(variance))

    def penalized_reward(
        self,
        x: Any,
        k: float = 1.0,
        *,
        penalty: str | RewardPenalty = "std",
        beta: float | None = None,
        level: float | None = None,
        reference: Any = None,
        groups: Any = None,
    ) -> torch.Tensor:
        """Penalized reward per item ``(B,)``, by default ``mean - k * sqrt(variance)``.

        Args:
            x: Items ``(B, *item)`` (a token dict, or texts given a tokenizer).
            k: Number of standard deviations to subtract (``k < 0`` gives an optimistic bonus).
            penalty, beta, level: The other penalties, as in :func:`~bt_laplace.rlhf.penalize`
                (``"variance"``, ``"quantile"`` with ``level``, ``"kl"`` and
                ``"kl_optimistic"`` with ``beta``), or one
                :class:`~bt_laplace.penalties.RewardPenalty` as ``penalty``.
            reference: None (default): the absolute reward's moments, ``post(x)``.
                ``"group"`` or reference items ``(M, *item)``: the moments of
                :meth:`relative_reward`, whose variance leaves out the offset pairs cannot
                identify; use ``"group"`` to rank the candidates of one prompt (the ranking
                is that of ``mean - k * std`` relative to the group).
            groups: With ``reference="group"``, the group of each item, as in
                :meth:`relative_reward` (candidates of many prompts in one call).
        """
        rule = RewardPenalty.from_arguments(penalty, k=k, beta=beta, level=level)
        if reference is None:
            if groups is not None:
                raise ValueError(
                    "`groups` needs reference='group' (rewards relative to each group); "
                    "absolute rewards (reference=None) do not depend on the groups."
                )
            mean, variance = self(x)
        else:
            mean, variance = self.relative_reward(x, reference, groups=groups)
        return rule.apply(mean, variance)

    @autograd_query
    def sample(
        self,
        x: Any,
        n_samples: int = 100,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Joint samples of the linearized rewards of all items in ``x``.

        Args:
            x: Items ``(B, *item)``.
            n_samples: Number of samples ``S``.
            generator: Random generator (on the posterior's device).

        Returns:
            ``(S, B)``; rows are draws of one function, so items are correlated across columns.
        """
        x = self.reader.items(x)
        n_samples = check_positive_int("n_samples", n_samples)
        if n_rows(x) > self.batch_size:
            raise ValueError(
                f"`x` has {n_rows(x)} items but joint samples are drawn in one pass of at "
                f"most batch_size={self.batch_size}; pass fewer items or raise `batch_size`."
            )
        self.laplace.model.eval()
        return self.predictive.samples(x, n_samples, generator)

    # ------------------------------------------------------------------ hyperparameters
    @property
    def prior_precision(self) -> torch.Tensor:
        """The prior precision of the laplace-torch posterior."""
        return self.laplace.prior_precision

    def optimize_prior_precision(
        self,
        method: str = "gridsearch",
        *,
        val_loader: Iterable[Any] | None = None,
        train_loader: Iterable[Any] | None = None,
        link_approx: str = "quadrature",
        progress_bar: bool = False,
        distributed: bool = True,
        **prior_kwargs: Any,
    ) -> torch.Tensor:
        """Set the prior precision again, after the fit or on a loaded posterior (laplace-torch's
        ``optimize_prior_precision``, with the rules of :func:`~bt_laplace.fit_reward_posterior`).

        The curvature does not change, so no pass over the training pairs is needed except for
        the exact evidence. The usual case: validation pairs of unseen items arrive after the
        fit (an eval split, fresh labels). On real ratings the structured posteriors need a
        prior well below the evidence's to be calibrated on new items, and validation pairs
        find it (docs/results/prior_sweep.md).

        Args:
            method: ``"gridsearch"`` (default; minimize the validation NLL of the pair
                probabilities over ``log_prior_prec_min``..``log_prior_prec_max`` in
                ``grid_size`` steps, needs ``val_loader``) or ``"marglik"`` (maximize the
                Laplace evidence: the exact Bradley-Terry GGN's when ``train_loader`` is
                given, else the fitted structure's own, laplace-torch's procedure).
            val_loader: Validation pairs ``(x, y)`` for ``"gridsearch"``.
            train_loader: The pairs the posterior was fitted on, every one once, for the
                exact evidence of ``"marglik"``.
            link_approx: Pair probability that scores the grid search.
            progress_bar: Show a tqdm bar.
            distributed: Sum the validation NLL or the exact evidence across the ranks of an
                initialized ``torch.distributed`` process group, as the fit does.
            **prior_kwargs: Settings of the method (``grid_size``, ``log_prior_prec_min``,
                ``log_prior_prec_max``; ``n_steps``, ``lr``, ``prior_structure`` for the
                structure's own evidence).

        Returns:
            The new prior precision (also in :attr:`prior_precision`).

        Raises:
            ValueError: If ``method`` is not one of the two, ``"gridsearch"`` has no
                ``val_loader``, or a setting does not belong to the method.
        """
        setting = PriorSetting.for_method(
            method,
            has_train=train_loader is not None,
            has_val=val_loader is not None,
            link_approx=link_approx,
            settings=prior_kwargs,
        )
        with self.lock:
            self.weights.check()
            check_sharded_batch_counts(self.model, train_loader=train_loader, val_loader=val_loader)
            reset_prior_precision(
                self.predictive,
                setting,
                train_loader=train_loader,
                val_loader=val_loader,
                read_pairs=self.reader.pairs,
                processes=Processes(distributed),
                progress_bar=progress_bar,
            )
        self.prior_calibration = None  # the prior is now the method's, as it finds it
        return self.prior_precision

    def log_marginal_likelihood(self) -> torch.Tensor:
        """Laplace approximation of the log marginal likelihood at the current prior."""
        return self.laplace.log_marginal_likelihood().detach()

    def validation_nll(self, loader: Iterable[Any], *, link_approx: str = "quadrature") -> float:
        """Mean negative log likelihood of the labels of a loader of pairs ``(x, y)``; a
        batch's ``margin`` (TRL's) shifts the logit as in the likelihood the model was trained
        with, and ``link_approx="mc"`` draws from a generator seeded 0 (the grid search's
        scoring, :func:`~bt_laplace.prior.gridsearch.pair_nll_sum`)."""
        link = LinkApprox.check("link_approx", link_approx)
        with self.lock:
            self.weights.check()
            total, count = pair_nll_sum(self.predictive, loader, self.reader.pairs, link)
        if count == 0:
            raise ValueError("`loader` yielded no pairs; pass a non-empty validation loader.")
        return total / count


def __getattr__(name: str) -> object:
    """``bt_laplace.posterior.fit_reward_posterior`` moved to :mod:`bt_laplace.fit` (the top
    level, ``bt_laplace.fit_reward_posterior``, is the stable spelling)."""
    if name == "fit_reward_posterior":
        import warnings

        import bt_laplace  # the package top, complete by the time a module attribute is read

        message = "bt_laplace.posterior.fit_reward_posterior moved to bt_laplace.fit; use "
        warnings.warn(message + "bt_laplace.fit_reward_posterior.", DeprecationWarning, 2)
        return bt_laplace.fit_reward_posterior
    raise AttributeError(f"module 'bt_laplace.posterior' has no attribute {name!r}")
