"""The one way to serve the app: uvicorn with the project's request-line protocol, used by `make run`, the tests
and the bench. `uvicorn server:app` still serves the app, without the protocol's connection limits and without
raw UTF-8 request lines (the tutorial's curl commands).

    python -m chains.hosting [--host 127.0.0.1] [--port 8000] [--workers 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile

import uvicorn
from uvicorn.config import LOGGING_CONFIG

APP = "server:app"
# The custom protocol is named here and nowhere else.
PROTOCOL = "chains.hosting.http_protocol:Utf8RequestLineProtocol"
# After SIGTERM's drain (chains.hosting.drain) every stream has had its terminal event; this bounds how long a
# client that does not read may keep the process alive after that.
GRACEFUL_SHUTDOWN_SECONDS = 10
# Connections the kernel queues before the app accepts them (uvicorn's default is 2,048): a burst of 2,000 clients
# filled that to within 48 places while one busy worker streamed. The kernel caps it at net.core.somaxconn.
BACKLOG = 4096


def command(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, quiet: bool = False,
            python: str = sys.executable) -> list[str]:
    """The argv that serves the app, for a process of its own (the tests and the bench start it this way).
    `quiet`: warnings only, no access log (the bench runs every contestant so)."""
    return [python, "-m", "chains.hosting", "--host", host, "--port", str(port), "--workers", str(workers),
            *(["--quiet"] if quiet else [])]


def log_config(quiet: bool) -> dict[str, object]:
    """uvicorn's logging, and the project's own loggers (`chains.*`: refusals by the request-line protocol,
    connections closed to make room, clients that left) on the same handler: uvicorn configures only its own,
    and Python's last-resort handler would show warnings only. The stream-end line has its own handler
    (chains.observability.observer)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["chains"] = {"handlers": ["default"], "level": "WARNING" if quiet else "INFO",
                                   "propagate": False}
    return config


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, quiet: bool = False) -> None:
    # Prometheus' multiprocess mode: each worker writes its metrics to files in this directory and /metrics adds
    # them up, so any worker's scrape shows the whole server. A fresh directory per start (old files would count
    # again), removed at the end; set before any worker imports prometheus_client. One given by the operator is
    # used as it is.
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chains-metrics-")
    try:
        uvicorn.run(APP, host=host, port=port, workers=workers, http=PROTOCOL, backlog=BACKLOG,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                    log_level="warning" if quiet else "info", access_log=not quiet, log_config=log_config(quiet))
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m chains.hosting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="warnings only, no access log")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.workers, args.quiet)
