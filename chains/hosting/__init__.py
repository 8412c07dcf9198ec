"""Hosting: uvicorn with the request-line protocol (`http_protocol`), the static pages (`static`), and the one
launcher (`launcher`) that `make run`, the tests and the bench all use: `python -m chains.hosting`."""
