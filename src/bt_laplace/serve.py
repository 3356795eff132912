"""An HTTP reward server for OpenRLHF: a saved posterior answers ``POST /get_reward``.

Needs the ``serve`` extra (FastAPI and uvicorn): ``pip install "bt-laplace[serve]"``.

Start it with one command (``bt-laplace-serve`` is the same)::

    python -m bt_laplace.serve --posterior FOLDER --model MODEL_DIR [--port 5000]

and point OpenRLHF at it: ``--remote_rm_url http://HOST:5000/get_reward`` (releases up to
0.9.9), ``--reward.remote_url http://HOST:5000/get_reward`` (its main branch since April 2026).

The protocol is OpenRLHF's remote reward model (https://github.com/OpenRLHF/OpenRLHF,
``openrlhf/utils/agent.py``, ``SingleTurnAgentExecutor._fetch_rewards_via_http``, and its
reference server ``openrlhf/cli/serve_rm.py``; the same in v0.9.9 and on main, commit
3c3be62). OpenRLHF posts one sample per request::

    {"query": [text], "prompts": [prompt], "labels": [label]}

where ``text`` is the policy's whole sequence, prompt and response, decoded with
``skip_special_tokens=False`` (so it may hold the chat template's special tokens and end with
the eos token), and reads back::

    {"rewards": [r], "scores": [s], "extra_logs": {"reward_mean": [m], "reward_std": [sd]}}

``rewards`` trains the policy; ``scores`` (here equal to ``rewards``, as in OpenRLHF's own
server) feeds its dynamic filtering; each ``extra_logs`` key is logged per sample. The
lists hold one number per text of ``query``; a request may hold several texts.

Rewards. Each text is scored as one item, prepared as the posterior's training texts were
(:meth:`~bt_laplace.TextPairCollator.collate_items`: the tokenizer's special tokens, the eos
token appended unless the text ends with it, ``max_length`` and ``truncation`` as saved with
the posterior). The special tokens the tokenizer adds itself (a leading bos or ``[CLS]``, a
trailing ``[SEP]``) are taken off a text that already has them first
(:class:`~bt_laplace.reading.AddedTokens`), so they are not doubled (the mirror image of
TRL's rule for the eos): a text decoded with them scores as the plain text. A text longer than
``max_length`` is scored whole (``long_queries="score"``, the default), as far as the model
reads; a longer one keeps the end the model reads the reward from, with a
:class:`~bt_laplace.BTLaplaceWarning`, and is counted: ``GET /health`` reports ``truncated``,
and with ``log_truncated`` (on by the command line) ``extra_logs`` holds ``truncated``, 1.0
for each text cut, 0.0 else.
``rewards`` are :func:`~bt_laplace.penalties.penalize` of the posterior mean and variance
(``mean - k std`` by default); ``prompts`` and ``labels`` are checked and otherwise unused.
``--bare`` serves the MAP model's reward ``r(x)`` instead (no variance, no penalty), the
baseline a posterior server is compared with.

Batching. OpenRLHF sends one text per request, many requests at once. Requests arriving
within ``max_wait_ms`` of each other (or while a batch runs) are scored in one model call
(:class:`~bt_laplace._batcher.MicroBatcher`), in a worker thread, so the server keeps accepting
requests meanwhile; ``GET /health`` reports the batches run.

Errors. A bad request gets 400 (not JSON) or 422 (a missing or mistyped field, too many
texts, a text without tokens, or over ``max_length`` with ``long_queries="refuse"``), a
failure while scoring gets 500, each as ``{"error": "..."}`` naming the field, and logged
with its reason (4xx at WARNING level: OpenRLHF's client does not read the body); the server
keeps serving. If a batch fails, each of its
requests is retried on its own, so only the failing ones get 500.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
except ImportError as err:  # pragma: no cover - exercised by hiding fastapi in the tests
    raise ImportError(
        "bt_laplace.serve needs FastAPI and uvicorn; install the extra: "
        'pip install "bt-laplace[serve]"'
    ) from err

import torch

from bt_laplace._batcher import MicroBatcher
from bt_laplace._checks import check_finite, check_positive_int
from bt_laplace._protocol import RequestError, read_request, response_body
from bt_laplace._tokens import concat
from bt_laplace.choices import LongQueries, Truncation
from bt_laplace.inputs import QueryReader
from bt_laplace.penalties import PENALTIES, RewardPenalty
from bt_laplace.posterior import RewardPosterior
from bt_laplace.reading import AddedTokens

__all__ = ["create_app", "main"]

logger = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Scorer:
    """Runs in the worker thread: one model call for the token dicts of a batch of requests,
    split back into one response body per request."""

    def __init__(self, posterior: RewardPosterior, *, bare: bool, penalty: RewardPenalty):
        self.posterior = posterior
        self.bare = bare
        self.penalty = penalty
        collator = posterior.text_collator
        self.pad_id, self.side = collator.pad_token_id, collator.padding_side

    def __call__(self, payloads: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        tokens = concat(payloads, self.pad_id, self.side)
        post = self.posterior
        if self.bare:
            device = next(post.model.parameters()).device
            with post.lock, torch.inference_mode():
                mean = post.model({k: v.to(device) for k, v in tokens.items()}).reshape(-1)
            reward, std = mean, None
        else:
            mean, variance = post.predict(cast(Any, tokens))  # a token dict
            reward, std = self.penalty.apply(mean, variance), variance.sqrt()
        if not bool(torch.isfinite(reward).all()):
            raise RuntimeError(
                "the model gave a non-finite reward (NaN or infinite); check the model's "
                "weights and dtype."
            )
        columns = {"rewards": reward, "mean": mean, "std": std}
        lists = {k: v.detach().cpu().double().tolist() for k, v in columns.items() if v is not None}
        bodies, start = [], 0
        for p in payloads:
            stop = start + p["input_ids"].shape[0]
            part = {k: v[start:stop] for k, v in lists.items()}
            bodies.append(response_body(part["rewards"], part["mean"], part.get("std")))
            start = stop
        return bodies


def _check_posterior(posterior: Any) -> None:
    """Refuse what is not a posterior that reads texts."""
    if not isinstance(posterior, RewardPosterior):
        raise TypeError(
            f"`posterior` must be a bt_laplace.RewardPosterior, got {type(posterior).__name__}; "
            "load one with bt_laplace.load_reward_posterior(folder, model, tokenizer=tokenizer)."
        )
    if posterior.text_collator is None:
        raise TypeError(
            "`posterior` has no tokenizer, so it cannot score texts; call "
            "posterior.set_tokenizer(tokenizer) or load it with "
            "load_reward_posterior(folder, model, tokenizer=tokenizer)."
        )


def create_app(
    posterior: RewardPosterior,
    *,
    penalty: str | RewardPenalty = "std",
    k: float = 1.0,
    beta: float | None = None,
    level: float | None = None,
    bare: bool = False,
    max_batch_size: int = 64,
    max_wait_ms: float = 2.0,
    max_request_size: int = 1024,
    log_truncated: bool = False,
) -> FastAPI:
    """A FastAPI app answering OpenRLHF's ``POST /get_reward`` from ``posterior``.

    Serve it with uvicorn (``uvicorn.run(app, host=..., port=...)``, one worker: the model lives
    in the process). The batcher starts with the app (its lifespan); ``app.state.batcher``
    counts the batches and requests run (:class:`~bt_laplace._batcher.MicroBatcher`).

    Args:
        posterior: A posterior that takes texts (:meth:`~bt_laplace.RewardPosterior.set_tokenizer`,
            or ``load_reward_posterior(..., tokenizer=)``); its ``max_length``, ``truncation``,
            ``append_eos`` and ``long_queries`` apply to the queries.
        penalty, k, beta, level: How ``rewards`` come from the reward's mean and variance, as in
            :func:`~bt_laplace.penalties.penalize` (default ``mean - 1 std``).
        bare: Serve the MAP model's reward instead (no variance, no penalty; ``extra_logs``
            holds ``reward_mean`` only).
        max_batch_size: Most texts scored in one model call.
        max_wait_ms: How long a request waits for others to join its batch, in milliseconds.
        max_request_size: Most texts in one request (bounds the tokenization done on the event
            loop); larger requests get 422.
        log_truncated: Add ``truncated`` to every response's ``extra_logs``: 1.0 for a text
            longer than the model reads, cut to it, else 0.0 (OpenRLHF logs its mean). Off by
            default here, on in the command line; ``GET /health`` counts them either way.

    Returns:
        The app, with ``POST /get_reward`` and ``GET /health``.

    Raises:
        TypeError: If ``posterior`` is not a RewardPosterior with a tokenizer.
        ValueError: For a bad penalty or size.
    """
    _check_posterior(posterior)
    rule = RewardPenalty.from_arguments(penalty, k=k, beta=beta, level=level)
    max_batch_size = check_positive_int("max_batch_size", max_batch_size)
    max_request_size = check_positive_int("max_request_size", max_request_size)
    if not isinstance(log_truncated, bool):
        raise TypeError(f"`log_truncated` must be a bool, got {type(log_truncated).__name__}.")
    wait = check_finite("max_wait_ms", max_wait_ms)
    if wait < 0:
        raise ValueError(f"`max_wait_ms` must be >= 0, got {max_wait_ms}.")
    batcher: MicroBatcher[dict[str, torch.Tensor], dict[str, Any]] = MicroBatcher(
        _Scorer(posterior, bare=bare, penalty=rule),
        max_batch_size=max_batch_size,
        max_wait_s=wait / 1000.0,
    )
    routes = _Routes(posterior.reader, batcher, max_request_size, "bare" if bare else "posterior")
    routes.log_truncated = log_truncated
    app = FastAPI(title="bt_laplace reward server", lifespan=routes.lifespan)
    app.state.batcher = batcher
    app.state.posterior = posterior
    app.exception_handler(HTTPException)(routes.http_error)
    app.post("/get_reward")(routes.get_reward)
    app.get("/health")(routes.health)
    return app


class _Routes:
    """The app's lifespan (the batcher runs while the app does) and its answers: texts are
    read into tokens on the event loop thread (a fast tokenizer must not be used by two
    threads), scored by the batcher in its worker thread."""

    def __init__(
        self, reader: QueryReader, batcher: MicroBatcher[Any, Any], max_request_size: int, mode: str
    ) -> None:
        self.reader, self.batcher, self.mode = reader, batcher, mode
        self.max_request_size = max_request_size
        self.collator = reader.text_collator
        self.window = reader.window
        #: the special tokens the tokenizer adds itself, taken off a text that has them
        self.added = AddedTokens.of(self.collator.tokenizer)
        #: texts cut to the model's window so far
        self.truncated = 0
        self.log_truncated = False

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()

    async def http_error(self, request: Request, exc: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        return self._refuse(
            exc.status_code,
            f"{where}: {exc.detail}; this server answers POST /get_reward and GET /health.",
        )

    @staticmethod
    def _refuse(status: int, message: str) -> JSONResponse:
        """The answer to a refused request, its reason logged (OpenRLHF's client logs only
        the status, at INFO level)."""
        if status < 500:
            logger.warning("refused a request (HTTP %d): %s", status, message)
        return _error(status, message)

    async def get_reward(self, request: Request) -> JSONResponse:
        try:
            texts = read_request(await request.body(), self.max_request_size)
            texts = [self.added.strip_from(t) for t in texts]
            tokens, cut = self.collator.collate_queries(texts, window=self.window)
            empty = (tokens["attention_mask"].sum(1) == 0).nonzero().flatten().tolist()
            if empty:
                raise RequestError(
                    422,
                    f"field 'query' entry {empty[0]} ({texts[empty[0]][:60]!r}) has no tokens "
                    "(the tokenizer adds none itself and no eos is appended); send a non-empty "
                    "text.",
                )
        except RequestError as err:
            return self._refuse(err.status, str(err))
        except (ValueError, TypeError) as err:
            return self._refuse(422, f"field 'query': {err}")
        self.truncated += len(cut)
        try:
            body = await self.batcher.submit(tokens, len(texts))
        except Exception as err:
            logger.exception("scoring failed")
            return _error(500, f"scoring failed: {type(err).__name__}: {err}")
        if self.log_truncated:
            body["extra_logs"]["truncated"] = [float(i in cut) for i in range(len(texts))]
        return JSONResponse(body)

    async def health(self) -> dict[str, Any]:
        batcher = self.batcher
        return {
            "status": "ok",
            "mode": self.mode,
            "batches": batcher.batches,
            "requests": batcher.requests,
            "items": batcher.items,
            "largest_batch": batcher.largest,
            "busy_seconds": batcher.busy_s,
            "truncated": self.truncated,
            "window": self.window.length,
        }


# ---------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    class DefaultsShown(argparse.HelpFormatter):
        """``--help`` names each option's default, unless its help already says it or the
        default is None or False (argparse's ArgumentDefaultsHelpFormatter prints those too)."""

        def _get_help_string(self, action: argparse.Action) -> str | None:
            text = action.help or ""
            if "(default" in text or action.default in (None, False, argparse.SUPPRESS):
                return action.help
            return f"{text} (default: %(default)s)"

    parser = argparse.ArgumentParser(
        prog="python -m bt_laplace.serve",
        description="Serve a saved bt_laplace reward posterior to OpenRLHF: POST /get_reward "
        "with {'query': [text, ...]} gives rewards (mean - k std by default), scores and "
        "extra_logs {'reward_mean', 'reward_std'}.",
        formatter_class=DefaultsShown,
    )
    add = parser.add_argument
    add("--posterior", required=True, help="folder written by RewardPosterior.save")
    add("--model", required=True, help="the reward model's save_pretrained folder "
        "(AutoModelForSequenceClassification, num_labels=1), as fitted")  # fmt: skip
    add("--tokenizer", help="tokenizer folder (default: --model)")
    add("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    add("--port", type=int, default=5000, help="port to listen on")
    add("--penalty", default="std", choices=PENALTIES, help="see bt_laplace.penalties")
    add("--k", type=float, default=1.0, help="multiplier of 'std' and 'variance'")
    add("--beta", type=float, help="KL coefficient of 'kl' and 'kl_optimistic'")
    add("--level", type=float, help="lower tail probability of 'quantile'")
    add("--bare", action="store_true", help="serve the MAP model's reward only (no variance)")
    add("--max-batch-size", type=int, default=64, help="most texts per model call")
    add("--max-wait-ms", type=float, default=2.0, help="how long a request waits for a batch")
    add("--max-request-size", type=int, default=1024, help="most texts per request")
    add("--max-length", type=int, help="longest text in tokens (default: as saved, else the "
        "model's max_position_embeddings)")  # fmt: skip
    add("--truncation", choices=Truncation.values(), help="texts over --max-length: 'left'/"
        "'right' cut tokens on that side; 'error' leaves them to --long-queries (default: as "
        "saved)")  # fmt: skip
    add("--long-queries", choices=LongQueries.values(), help="texts over --max-length under "
        "--truncation error: 'score' reads them whole up to the model's positions (cutting "
        "beyond on the side it reads), 'refuse' answers 422 (default: as saved)")  # fmt: skip
    add("--log-truncated", action=argparse.BooleanOptionalAction, default=True,
        help="add 'truncated' (1.0 for a text cut to the model's positions) to "
        "extra_logs")  # fmt: skip
    add("--append-eos", action=argparse.BooleanOptionalAction, default=None,
        help="append the eos token to texts not ending with it (default: as saved)")  # fmt: skip
    add("--dtype", choices=("auto", "bfloat16", "float16", "float32", "float64"), default="auto",
        help="cast the model to this dtype (the one the posterior was fitted in)")  # fmt: skip
    add("--device", help="torch device (default: cuda if available, else cpu)")
    add("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
        help="the server's log level")  # fmt: skip
    add("--access-log", action="store_true", help="log every request")
    return parser


def load_app(args: argparse.Namespace) -> FastAPI:
    """Load the model, tokenizer and posterior that ``args`` names and build the app.

    Args:
        args: The parsed command line (see ``python -m bt_laplace.serve --help``).

    Returns:
        The app of :func:`create_app`.

    Raises:
        OSError: If a folder cannot be read.
        ValueError: If the posterior does not belong to the model (names, shapes, weights).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bt_laplace.io import load_reward_posterior
    from bt_laplace.model import PairwiseRewardModel

    rule = RewardPenalty(args.penalty, args.k, args.beta, args.level)  # before loading anything
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    net = AutoModelForSequenceClassification.from_pretrained(args.model)
    if args.dtype != "auto":
        net = net.to(getattr(torch, args.dtype))
    net = net.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    posterior = load_reward_posterior(
        args.posterior, PairwiseRewardModel(net).eval(), tokenizer=tokenizer
    )
    saved = posterior.text_collator.options
    # no limit saved: the model's positions (a longer text would fail inside the model)
    max_length = args.max_length or saved.max_length
    max_length = max_length or getattr(net.config, "max_position_embeddings", None)
    text = dataclasses.replace(
        saved,
        max_length=max_length,
        truncation=args.truncation or saved.truncation,
        append_eos=saved.append_eos if args.append_eos is None else args.append_eos,
        long_queries=args.long_queries or saved.long_queries,
    )
    posterior.set_tokenizer(tokenizer, options=text)
    return create_app(
        posterior,
        penalty=rule,
        bare=args.bare,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_request_size=args.max_request_size,
        log_truncated=args.log_truncated,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, load the posterior and serve it until interrupted."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        RewardPenalty(args.penalty, args.k, args.beta, args.level)  # raises on a bad combination
        for name in ("max_batch_size", "max_request_size"):
            check_positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
        if not (math.isfinite(args.max_wait_ms) and args.max_wait_ms >= 0):
            raise ValueError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    try:
        app = load_app(args)
    except (OSError, ValueError, TypeError) as err:
        hint = ""
        if "fingerprint" in str(err) and args.dtype == "auto":
            hint = (
                " If the model was fitted in another dtype than it was saved in (or a "
                "save_pretrained round trip left buffers in float32), pass --dtype."
            )
        parser.exit(
            1, f"{parser.prog}: cannot serve {args.posterior} on {args.model}: {err}{hint}\n"
        )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log
    )


if __name__ == "__main__":
    main()
