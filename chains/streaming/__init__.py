"""The streaming core: generation → run (encoded events, memory or Redis) → listeners. No web framework."""
