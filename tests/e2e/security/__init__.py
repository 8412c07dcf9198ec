"""Security: the attack suite, limits, API keys."""
