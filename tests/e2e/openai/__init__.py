"""The OpenAI-compatible API (`/v1`), the openai provider, and one deployment chained behind another."""
