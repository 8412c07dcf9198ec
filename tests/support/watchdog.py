"""Kills a server's process group when the process that started it dies, however it dies (SIGKILL included).

    python -m tests.support.watchdog <owner pid> <process group>

Started by `tests.support.servers` beside each server, in a session of its own. The server itself gets
PDEATHSIG, but its workers (`--workers N`, uvicorn's multiprocessing children) and their helpers do not: they
would be orphaned and go on serving. Every one of them is in the server's process group, so the watchdog kills
the group. It exits as soon as the group is gone (a normal stop), so none outlive their server.
"""

from __future__ import annotations

import os
import select
import signal
import sys

POLL_SECONDS = 0.25


def watch(owner: int, group: int) -> None:
    try:
        owner_fd = os.pidfd_open(owner)
    except ProcessLookupError:
        owner_fd = None
    poller = select.poll()
    if owner_fd is not None:
        poller.register(owner_fd, select.POLLIN)  # readable once the owner has exited
    while True:
        owner_gone = owner_fd is None or bool(poller.poll(POLL_SECONDS * 1000)) or os.getppid() != owner
        try:
            os.killpg(group, signal.SIGKILL if owner_gone else 0)
        except ProcessLookupError:
            return  # the group is gone: nothing left to watch
        if owner_gone:
            return


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the test run, which then stops its servers
    watch(int(sys.argv[1]), int(sys.argv[2]))
