"""The posterior as a reward function for TRL's online trainers (GRPO, RLOO, online DPO).

Shape legend: ``B`` completions in one call (the prompts repeated, one per completion).

TRL 1.16 calls each entry of ``reward_funcs`` that is not a model as

.. code-block:: python

    reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids,
                **reward_kwargs)  # -> one float (or None) per completion

(``GRPOTrainer._calculate_rewards`` and ``RLOOTrainer._calculate_rewards``, trl/trainer;
``OnlineDPOTrainer._calculate_rewards_from_functions`` in trl/experimental/online_dpo;
``_AsyncRolloutLoop._score_group`` in trl/experimental/async_grpo). ``prompts`` and
``completions`` are ``B`` strings, or for a conversational dataset ``B`` lists of
``{"role", "content"}`` messages (a completion is ``[{"role": "assistant", "content": ...}]``).
``reward_kwargs`` holds the dataset's other columns (one value per completion) and
``trainer_state``; GRPO and RLOO also pass ``log_extra(column, values)``, which adds a column
to the completions table, and ``log_metric(name, value)``, which logs a scalar averaged over
each logging step beside TRL's own metrics. TRL names the function in its logs by its
``__name__`` (``trl.trainer.utils.get_callable_name``, which falls back to the class name),
and the asynchronous GRPO trainer pickles it into a spawned process.

:class:`PosteriorRewardFunction` is such a callable: it renders each prompt and completion as
the training pairs were (:class:`~bt_laplace.TextPairCollator`: the eos appended to a string
answer and the prompt prepended, conversations through the chat template), asks the posterior
for the reward mean and variance of every completion (relative to the completions of the same
prompt with ``relative=True``), and returns the penalized reward of
:func:`~bt_laplace.penalties.penalize`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from typing_extensions import Unpack

from bt_laplace.inputs import check_texts
from bt_laplace.penalties import RewardPenalty
from bt_laplace.posterior import RewardPosterior
from bt_laplace.reading import TokenWindow
from bt_laplace.text import TextKeywords, TextOptions, TextPairCollator

__all__ = ["PosteriorRewardFunction", "make_reward_function"]

#: the name TRL logs the reward under unless ``name`` is given
DEFAULT_NAME = "posterior_reward"


def _checked(posterior: Any) -> RewardPosterior:
    if not isinstance(posterior, RewardPosterior):
        raise TypeError(
            "`posterior` must be a bt_laplace.RewardPosterior (from "
            f"bt_laplace.fit_reward_posterior), got {type(posterior).__name__}."
        )
    return posterior


def _collator(posterior: RewardPosterior, tokenizer: Any, text: TextOptions) -> TextPairCollator:
    """A collator for ``tokenizer`` with ``text``, or the posterior's own."""
    if tokenizer is not None:
        return TextPairCollator(tokenizer, options=text)
    if text.changed():
        raise ValueError(
            f"{sorted(text.changed())} set how `tokenizer` renders texts, but no tokenizer "
            "was given, and the posterior's text_collator keeps its own settings; pass the "
            "tokenizer too, or call post.set_tokenizer(tokenizer, ...) with them."
        )
    if posterior.text_collator is None:
        raise TypeError(
            "make_reward_function needs the reward model's tokenizer: `tokenizer` is None "
            "and the posterior has no text_collator. Pass it, "
            "make_reward_function(post, tokenizer), or call post.set_tokenizer(tokenizer) "
            "first (a fit on bt_laplace.text_preference_dataloader sets it)."
        )
    return posterior.text_collator


def _prompt_key(prompt: Any) -> Hashable:
    """A hashable key of a prompt: the string itself, or the messages as canonical JSON."""
    if isinstance(prompt, list):
        return ("messages", json.dumps(prompt, sort_keys=True, default=str))
    return ("text", prompt)


class PosteriorRewardFunction:
    """A reward function for TRL's ``reward_funcs``: penalized posterior rewards of texts.

    Called as TRL 1.16 calls a reward function (see the module docstring), it returns one
    Python float per completion: ``penalize(mean, variance, penalty=..., k=..., beta=...,
    level=...)`` of the posterior reward ``N(mean, variance)`` of the prompt followed by the
    completion; ``k=0`` gives the posterior mean. With ``relative=True`` the moments are those
    of :meth:`~bt_laplace.RewardPosterior.relative_reward` with ``reference="group"`` and the
    prompt of each completion as its group: the variance then leaves out the per-prompt
    offset Bradley-Terry pairs cannot identify (docs/guides/gotchas.md). GRPO and RLOO subtract the
    mean of a prompt's completions anyway, so the relative mean changes nothing there; the
    relative variance is what changes the penalty.

    When the trainer passes ``log_extra`` and ``log_metric`` (TRL 1.16's GRPO and RLOO), the
    completions table gets the columns ``"<name>/mean"`` and ``"<name>/std"`` (each
    completion's posterior mean and standard deviation), and the logs get
    ``"rewards/<name>/posterior_mean"`` (the batch mean of the means),
    ``"rewards/<name>/posterior_std"`` (the batch mean of the standard deviations: a rise
    signals a policy drifting to where the reward model is unsure, the reward-hacking signal)
    and ``"rewards/<name>/posterior_std_max"``; from the first completion longer than the model
    reads on (see below), ``"rewards/<name>/truncated"``, the running count of such
    completions. TRL itself logs the returned (penalized)
    rewards as ``"rewards/<name>/mean"`` and ``"rewards/<name>/std"``.

    A text longer than the fit's ``max_length`` is scored whole (``long_queries="score"``,
    the default of :class:`~bt_laplace.text.TextOptions`), as far as the model reads
    (:attr:`window`); a longer one keeps the end the model reads the reward from (the last
    tokens of a decoder, the first of a ``[CLS]`` encoder), with a
    :class:`~bt_laplace.BTLaplaceWarning`, and is counted in :attr:`truncated` and the
    ``truncated`` metric. ``long_queries="refuse"`` raises instead.

    Instances pickle (the posterior rebuilds from its model and saved record, the tokenizer
    pickles), so the asynchronous GRPO trainer can send one to its scoring process.

    Args:
        posterior: A fitted :class:`~bt_laplace.RewardPosterior`; its ``batch_size`` bounds
            the items per forward pass.
        collator: Renders texts into token batches (the posterior's ``text_collator``, or one
            made for the tokenizer given to :func:`make_reward_function`).
        penalty, k, beta, level: As in :func:`~bt_laplace.penalties.penalize`.
        relative: Moments relative to the completions of the same prompt in the call.
        name: The ``__name__`` TRL logs the reward under.
        log: Log through ``log_extra`` and ``log_metric`` when the trainer passes them.

    Example: see :func:`make_reward_function`.
    """

    def __init__(
        self,
        posterior: RewardPosterior,
        collator: TextPairCollator,
        *,
        penalty: str = "std",
        k: float = 1.0,
        beta: float | None = None,
        level: float | None = None,
        relative: bool = False,
        name: str = DEFAULT_NAME,
        log: bool = True,
    ) -> None:
        _checked(posterior)
        if not isinstance(collator, TextPairCollator):
            raise TypeError(
                f"`collator` must be a bt_laplace.TextPairCollator, got {type(collator).__name__}; "
                "build the function with bt_laplace.make_reward_function(posterior, tokenizer)."
            )
        for flag, value in (("relative", relative), ("log", log)):
            if not isinstance(value, bool):
                raise TypeError(f"`{flag}` must be a bool, got {type(value).__name__}.")
        if not isinstance(name, str) or not name:
            raise TypeError(f"`name` must be a non-empty string, got {name!r}.")
        # every option checked now, not at the first training step
        self.rule = RewardPenalty(penalty, k, beta, level)
        self.posterior = posterior
        self.collator = collator
        self.penalty, self.k = self.rule.penalty, self.rule.k
        self.beta, self.level = self.rule.beta, self.rule.level
        self.relative = relative
        self.log = log
        #: how far the model reads a text: a longer one is cut to it, warned and counted
        self.window = TokenWindow.of(posterior.model, collator.tokenizer)
        #: texts cut to :attr:`window` so far, over every call
        self.truncated = 0
        #: the name TRL logs the reward under (trl.trainer.utils.get_callable_name reads it)
        self.__name__ = name

    def __repr__(self) -> str:
        options = f"penalty={self.penalty!r}, " + {
            "std": f"k={self.k}",
            "variance": f"k={self.k}",
            "quantile": f"level={self.level}",
        }.get(self.penalty, f"beta={self.beta}")
        return f"PosteriorRewardFunction({self.__name__!r}, {options}, relative={self.relative})"

    def moments(
        self, prompts: Sequence[Any], completions: Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior reward mean and variance of each completion after its prompt.

        Args:
            prompts: ``B`` prompts: strings, message lists or None.
            completions: ``B`` completions: strings or message lists.

        Returns:
            ``(mean (B,), variance (B,))`` in the posterior's dtype, relative to the
            completions of the same prompt when ``relative`` is set.
        """
        completion_list, prompt_list = check_texts(completions, prompts, need_prompts=True)
        if not completion_list:
            raise ValueError("`completions` is empty; pass at least one completion.")
        mean, variance, _ = self._moments(prompt_list or [], completion_list)
        return mean, variance

    def _moments(
        self, prompts: list[Any], completions: list[Any]
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        # (B, L) token dict; RewardPosterior.__call__ takes these too (annotated as tensors)
        tokens: Any
        tokens, cut = self.collator.collate_queries(completions, prompts, window=self.window)
        self.truncated += len(cut)
        if self.relative:
            groups = [_prompt_key(p) for p in prompts]
            mean, variance = self.posterior.relative_reward(tokens, "group", groups=groups)
        else:
            mean, variance = self.posterior(tokens)
        return mean, variance, len(cut)

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        *,
        log_extra: Callable[[str, list[Any]], None] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        """Penalized posterior reward of each completion, as TRL calls a reward function.

        Args:
            prompts: ``B`` prompts: strings, or lists of ``{"role", "content"}`` messages.
            completions: ``B`` completions, of the same kind as the prompts.
            log_extra: TRL's ``log_extra(column, values)`` (GRPO and RLOO), or None.
            log_metric: TRL's ``log_metric(name, value)`` (GRPO and RLOO), or None.
            **kwargs: What else TRL passes (``completion_ids``, ``trainer_state``, the
                dataset's other columns); ignored.

        Returns:
            ``B`` Python floats.
        """
        completion_list, prompt_list = check_texts(completions, prompts, need_prompts=True)
        if not completion_list:
            return []
        mean, variance, _ = self._moments(prompt_list or [], completion_list)
        scores = self.rule.apply(mean, variance)
        if self.log:
            std = variance.sqrt()
            if log_extra is not None:
                log_extra(f"{self.__name__}/mean", mean.tolist())
                log_extra(f"{self.__name__}/std", std.tolist())
            if log_metric is not None:
                prefix = f"rewards/{self.__name__}/posterior"
                log_metric(f"{prefix}_mean", float(mean.mean()))
                log_metric(f"{prefix}_std", float(std.mean()))
                log_metric(f"{prefix}_std_max", float(std.max()))
                if self.truncated:  # from the first cut on: the running count
                    log_metric(f"rewards/{self.__name__}/truncated", float(self.truncated))
        return [float(s) for s in scores.tolist()]


def make_reward_function(
    posterior: RewardPosterior,
    tokenizer: Any = None,
    *,
    k: float = 1.0,
    penalty: str = "std",
    beta: float | None = None,
    level: float | None = None,
    relative: bool = False,
    options: TextOptions | None = None,
    name: str = DEFAULT_NAME,
    log: bool = True,
    **text: Unpack[TextKeywords],
) -> PosteriorRewardFunction:
    """A picklable reward function for ``reward_funcs`` of TRL's GRPO, RLOO and online DPO.

    ``GRPOTrainer(..., reward_funcs=make_reward_function(post, tokenizer, k=1.0))`` scores
    each completion with ``mean - k std`` of its posterior reward; see
    :class:`PosteriorRewardFunction` for what it returns and logs, and docs/guides/rlhf.md.

    Args:
        posterior: A fitted :class:`~bt_laplace.RewardPosterior`.
        tokenizer: The reward model's tokenizer (not necessarily the policy's: TRL passes
            decoded texts). None takes the posterior's ``text_collator`` (set by a fit on
            :func:`~bt_laplace.text_preference_dataloader`, ``post.set_tokenizer`` or
            ``load_reward_posterior(..., tokenizer=)``).
        k, penalty, beta, level: As in :func:`~bt_laplace.penalties.penalize`: ``"std"``
            ``mean - k std`` (default, ``k=0`` the posterior mean), ``"variance"``,
            ``"quantile"`` (``level``), ``"kl"`` / ``"kl_optimistic"`` (``beta``, the KL
            coefficient of the RL objective, e.g. ``GRPOConfig.beta``).
        relative: Moments relative to the other completions of the same prompt in the call
            (messages prompts are compared as JSON). Needs two or more completions per
            prompt (``num_generations``); with several processes, a prompt's completions
            scored by another process are not in the group.
        options: As in :class:`~bt_laplace.TextPairCollator`, with ``tokenizer`` only (else
            the posterior's collator keeps its own).
        name: The name TRL logs the reward under.
        log: Log through TRL's ``log_extra`` and ``log_metric`` when the trainer passes them.
        **text: The fields of ``options`` as keywords instead (``max_length``, ...).

    Returns:
        A :class:`PosteriorRewardFunction`.

    Raises:
        TypeError: Without ``tokenizer`` when the posterior has no ``text_collator``.

    Example:
        >>> import pickle, torch, transformers
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> import bt_laplace as btl
        >>> vocab = {"<pad>": 0, "</s>": 1, "the": 2, "cat": 3, "sat": 4, "<unk>": 5}
        >>> raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        >>> raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        >>> tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>",
        ...                                            eos_token="</s>")
        >>> _ = torch.manual_seed(0)
        >>> net = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        ...     vocab_size=6, n_embd=8, n_layer=1, n_head=2, num_labels=1, pad_token_id=0))
        >>> rows = [{"prompt": "the ", "chosen": "cat sat", "rejected": "sat"}] * 4
        >>> post = btl.fit_reward_posterior(
        ...     btl.PairwiseRewardModel(net).eval(), btl.text_preference_dataloader(rows, tok),
        ...     subset_of_weights="last_layer", prior_precision=1.0)
        >>> fn = btl.make_reward_function(post, k=1.0)  # the fit kept the tokenizer
        >>> fn.__name__, type(fn).__name__
        ('posterior_reward', 'PosteriorRewardFunction')
        >>> again = pickle.loads(pickle.dumps(fn))
        >>> again(["the "] * 2, ["cat", "sat"]) == fn(["the "] * 2, ["cat", "sat"])
        True
        >>> fn = btl.make_reward_function(post, tok, k=2.0, relative=True)
        >>> metrics = {}
        >>> rewards = fn(prompts=["the "] * 3, completions=["cat", "sat", "cat sat"],
        ...              completion_ids=[[3], [4], [3, 4]], log_metric=metrics.__setitem__)
        >>> len(rewards), type(rewards[0]).__name__, sorted(metrics)
        (3, 'float', ['rewards/posterior_reward/posterior_mean', \
'rewards/posterior_reward/posterior_std', 'rewards/posterior_reward/posterior_std_max'])
    """
    collator = _collator(_checked(posterior), tokenizer, TextOptions.of(options, **text))
    return PosteriorRewardFunction(
        posterior,
        collator,
        penalty=penalty,
        k=k,
        beta=beta,
        level=level,
        relative=relative,
        name=name,
        log=log,
    )
