"""The HTTP surfaces over the streaming core (chains.streaming), each split as vLLM splits an endpoint: `chat/`,
`runs/` and `openai/` (`protocol` wire models and encodings, `serving` the generator, `router` the routes); the
one SSE response (`sse`), LangServe's routes (`langserve`), `meta`, `metrics` and `sign_in`."""
