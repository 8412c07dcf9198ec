"""LangServe's routes for each chain: /invoke /batch /stream /stream_log /stream_events, schemas, playgrounds."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from fastapi import FastAPI
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list
from langserve import add_routes

from chains.runnables.chat import ChatChain


def mount_chains(app: FastAPI, chains: dict[str, ChatChain]) -> None:
    for name, chain in chains.items():
        # config_keys=(): nothing in a client's `config` reaches a run (chains.middleware.langserve_bodies).
        add_routes(app, chain, path=f"/{name}", playground_type="chat" if name == "conversation" else "default",
                   config_keys=())
        cancel_batches_together(chain)  # a /batch's runs stop together: one refused, or its client gone


async def _batch_together(self: Runnable[Any, Any], inputs: list[Any],
                          config: RunnableConfig | list[RunnableConfig] | None = None, *,
                          return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
    """`Runnable.abatch`, but its runs live and die together: when one fails (the local model refuses it) or the
    request is cancelled (its client left), every other run is cancelled, and its generation stops.
    (LangChain's abatch gathers its runs: the first failure is raised while the others run on.)"""
    if return_exceptions:  # LangServe never asks for it; kept for any other caller
        return await type(self).abatch(self, inputs, config, return_exceptions=True, **kwargs)
    configs = get_config_list(config, len(inputs))
    try:
        async with asyncio.TaskGroup() as runs:
            tasks = [runs.create_task(self.ainvoke(one, one_config, **kwargs))
                     for one, one_config in zip(inputs, configs)]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first failure, as abatch would raise it (a typed error: 503…)
    return [task.result() for task in tasks]


def cancel_batches_together(chain: Runnable[Any, Any]) -> None:
    """Installs `_batch_together` as this chain's `abatch` (what LangServe's /batch calls)."""
    # One instance's method replaced, on purpose: mypy forbids assigning to a method.
    chain.abatch = types.MethodType(_batch_together, chain)  # type: ignore[method-assign]
