"""The OpenAI-compatible surface (`/v1`): `protocol` (wire models, the chunk and completion encodings), `serving`
(the generator), `router`. The package is `chains.api.openai`; `import openai` still finds the SDK."""
