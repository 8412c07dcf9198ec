"""The HTTP surfaces over the chains: the one streaming core (`streaming`), its events (`events`), the one error
model (`errors`), and each surface split as vLLM splits an endpoint: `chat/` (`protocol` wire models and
encodings, `serving` the generator, `router` the routes), LangServe's routes (`langserve`), `meta` and `sign_in`."""
