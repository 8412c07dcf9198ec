"""LangServe's bodies checked before LangServe sees them: the shapes it mishandles, `config` keys, batch size."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.common.responses import invalid
from chains.common.scope import MODEL_ENDPOINTS, MODEL_RUNS

# What a client may send in LangServe's `config` without a 422. Routes are mounted with `config_keys=()`, so
# nothing in `config` reaches a run; these rules only decide what is accepted quietly and what is refused
# with a word (rather than dropped while the client believes it took effect). The chains have no
# configurable fields either, so no model, URL or key can be swapped per request.
# Labels for tracing, in Python's and LangChain.js's spelling: accepted (then dropped), if well-formed.
CONFIG_LABELS: dict[str, tuple[type, str]] = {
    "tags": (list, "a list of strings"), "metadata": (dict, "an object"),
    "run_name": (str, "a string"), "runName": (str, "a string"),
}
# What LangServe's own clients fill in by default: Python's `RemoteRunnable` (langchain-core's ensure_config)
# and LangChain.js 0.3's (`recursionLimit: 25`). Accepted at exactly these values, which change nothing;
# any other value asks for something this server does not do, and is refused.
CLIENT_DEFAULTS: dict[str, Any] = {
    "configurable": {}, "recursion_limit": 25, "recursionLimit": 25, "callbacks": None,
    "max_concurrency": None, "maxConcurrency": None,
}
_ACCEPTED_TEXT = ("accepted: tags, metadata, run_name; configurable, recursion_limit, callbacks and "
                  "max_concurrency only at LangChain's client defaults")


def config_problem(configs: list[dict[str, Any]]) -> str | None:
    """Why these LangServe configs are refused, or None."""
    for config in configs:
        for key, (kind, described) in CONFIG_LABELS.items():
            value = config.get(key)
            if value is not None and (not isinstance(value, kind) or (
                    isinstance(value, list) and not all(isinstance(tag, str) for tag in value))):
                return f"config: {key} must be {described}"
    unlisted = sorted({key for config in configs for key, value in config.items()
                       if key not in CONFIG_LABELS and (key not in CLIENT_DEFAULTS or CLIENT_DEFAULTS[key] != value)})
    if unlisted:
        return f"config keys not allowed: {', '.join(unlisted)} ({_ACCEPTED_TEXT})"
    return None


class LangServeBodies:
    """Refuses, with a 422 naming the field, the body shapes that LangServe 0.3.3 turns into a 500 or quietly
    mishandles: `config` or `kwargs` that is not an object (`"config": null`), a `/batch` whose `inputs` is not a
    list (a string would be batched letter by letter) or has more than MAX_BATCH_INPUTS items, `config` keys it
    would drop without a word (unpaired surrogates are refused before, by RequestLimits). A /batch's size is put
    in the scope (`MODEL_RUNS`) for the limits inside."""

    def __init__(self, app: ASGIApp, max_batch_inputs: int) -> None:
        self.app = app
        self.max_batch_inputs = max_batch_inputs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith(
                MODEL_ENDPOINTS):
            await self.app(scope, receive, send)
            return
        message = await receive()  # RequestLimits has read the whole body already: one message
        problem = self._problem(scope, message.get("body", b""))
        if problem is not None:
            field, text = problem
            await invalid(["body", *field], text)(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return message
            return await receive()

        await self.app(scope, replay, send)

    def _problem(self, scope: Scope, body: bytes) -> tuple[list[Any], str] | None:
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            return [], "the body is not valid JSON"
        if not isinstance(request, dict):
            return [], "the body must be a JSON object"
        batch = scope["path"].rstrip("/").endswith("/batch")
        if batch:
            inputs = request.get("inputs")
            if not isinstance(inputs, list):
                return ["inputs"], "inputs: must be a list of inputs"
            if len(inputs) > self.max_batch_inputs:
                return ["inputs"], f"inputs: {len(inputs)} inputs, more than MAX_BATCH_INPUTS={self.max_batch_inputs}"
            scope[MODEL_RUNS] = max(len(inputs), 1)
        config = request.get("config", {})
        configs = config if batch and isinstance(config, list) else [config]
        if not all(isinstance(one, dict) for one in configs):
            return ["config"], "config: must be an object" + (" or a list of objects" if batch else "")
        # LangServe ignores `kwargs`; LangChain.js sends one object per input to /batch.
        kwargs = request.get("kwargs", {})
        if not (isinstance(kwargs, dict) or (batch and isinstance(kwargs, list)
                and all(isinstance(one, dict) for one in kwargs))):
            return ["kwargs"], "kwargs: must be an object" + (" or a list of objects" if batch else "")
        problem = config_problem(configs)
        return None if problem is None else (["config"], problem)
