"""OpenRLHF's remote reward protocol on the wire: reading a request, writing a response.

A request is the JSON object ``{"query": [text, ...], "prompts": [prompt, ...], "labels":
[label, ...]}`` (``prompts`` and ``labels`` optional, one entry per text), a response
``{"rewards": [...], "scores": [...], "extra_logs": {"reward_mean": [...], "reward_std":
[...]}}``, one number per text. See :mod:`bt_laplace.serve` for where this comes from.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PROTOCOL", "RequestError", "read_request", "response_body"]

#: what a request looks like, for error messages
PROTOCOL = '{"query": [text, ...], "prompts": [prompt, ...], "labels": [label, ...]}'


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _shown(value: Any) -> str:
    """A JSON value's type and its first characters, for error messages."""
    return f"{type(value).__name__} {json.dumps(value)[:60]}"


def _check_list(data: dict[str, Any], name: str, n: int, *, strings: bool) -> None:
    """``data[name]``, if given, is a list of ``n`` entries (strings or nulls if ``strings``)."""
    value = data.get(name)
    if value is None:
        return
    if not isinstance(value, list) or len(value) != n:
        got = f"a list of {len(value)}" if isinstance(value, list) else _shown(value)
        raise RequestError(
            422,
            f"field '{name}' must be a list with one entry per text of 'query' ({n}), got {got}.",
        )
    if strings:
        bad = next((i for i, v in enumerate(value) if not isinstance(v, (str, type(None)))), None)
        if bad is not None:
            raise RequestError(
                422,
                f"field '{name}' entry {bad} must be a string (or null), got {_shown(value[bad])}.",
            )


def read_request(body: bytes, max_request_size: int) -> list[str]:
    """The texts of a ``/get_reward`` request body, after checking every field.

    ``prompts`` must be strings or nulls; ``labels`` may hold any JSON (OpenRLHF passes a
    dataset's label column through); both are otherwise unused, and other fields are ignored.

    Args:
        body: The raw request body.
        max_request_size: Most texts a request may hold.

    Returns:
        The texts of ``query``.

    Raises:
        RequestError: 400 for a body that is not JSON, 422 for a missing or mistyped field or
            more than ``max_request_size`` texts.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(
            400, f"the request body is not JSON ({err}); send {PROTOCOL} as application/json."
        ) from err
    if not isinstance(data, dict):
        raise RequestError(
            422, f"the request body must be a JSON object {PROTOCOL}, got {_shown(data)}."
        )
    if "query" not in data:
        raise RequestError(
            422, f"field 'query' is missing (the body has {sorted(data)}); send {PROTOCOL}."
        )
    query = data["query"]
    if not isinstance(query, list):
        raise RequestError(
            422,
            f"field 'query' must be a list of texts, got {_shown(query)}; wrap one text in a "
            "list: [text].",
        )
    if not query:
        raise RequestError(422, "field 'query' is an empty list; send at least one text.")
    if len(query) > max_request_size:
        raise RequestError(
            422,
            f"field 'query' has {len(query)} texts, more than this server's max_request_size="
            f"{max_request_size}; split the request, or start the server with a larger "
            "--max-request-size.",
        )
    bad = next((i for i, q in enumerate(query) if not isinstance(q, str)), None)
    if bad is not None:
        raise RequestError(
            422,
            f"field 'query' entry {bad} must be a string (the prompt and response, decoded), "
            f"got {_shown(query[bad])}.",
        )
    _check_list(data, "prompts", len(query), strings=True)
    _check_list(data, "labels", len(query), strings=False)
    return query


def response_body(
    rewards: list[float], mean: list[float], std: list[float] | None
) -> dict[str, Any]:
    """The answer to one request: ``scores`` repeat ``rewards`` (as OpenRLHF's own server
    does), ``extra_logs`` hold the mean and, if known, the standard deviation of each reward."""
    logs = {"reward_mean": mean} if std is None else {"reward_mean": mean, "reward_std": std}
    return {"rewards": rewards, "scores": rewards, "extra_logs": logs}
