"""Whether the chat model can take a request now, for the readiness probe: the local model loaded, an upstream
reachable. Each answer is a reason and what to say about it, or None."""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel


async def model_unready(model: BaseChatModel) -> tuple[str, str] | None:
    """`("model_not_loaded", …)` for a local model without its weights, `("no_upstream_reachable", …)` for
    upstreams none of which can take a request; None when the model can serve (the scripted model always can)."""
    from chains.models.upstreams import Upstreams  # imported by the openai provider anyway; cheap

    if isinstance(model, Upstreams):
        reason = await model.unreachable()
        return None if reason is None else ("no_upstream_reachable", reason)
    loaded = getattr(model, "loaded", True)
    if not loaded:
        return "model_not_loaded", "the local model is not loaded"
    return None
