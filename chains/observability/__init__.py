"""What an operator sees: Prometheus metrics, OpenTelemetry traces and one log line per stream.

Beside the chains, below the HTTP layer: nothing here imports a web framework. The streaming core calls one
observer (`observer.StreamsObserved`) when a generation starts, at its first token and at its end — nothing per
token; the pure-ASGI middleware (chains.middleware.observe) counts requests and opens a span per request; the
route (chains.api.metrics) serves `/metrics`.
"""
