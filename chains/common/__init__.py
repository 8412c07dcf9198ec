"""Below every other package: the error model, the request-scope keys, API keys and settings."""
