"""A loopback TCP proxy in front of a live server, which a test can cut: the honest way to drop a connection
mid-body from the server's side of the wire, whatever the browser or client does.

`cut()` closes every connection through the proxy at once, both ways: the client sees its response end mid-stream
(an incomplete chunked body), the server sees its client go. With `refuse=True` the proxy then takes new
connections and closes them at once, without a byte, until `restore()`: a network that is down for a while, so a
client's attempts to reconnect fail and it has to retry.
"""

from __future__ import annotations

import socket
import threading

from tests.support.servers import HOST


class CutProxy:
    def __init__(self, target_port: int) -> None:
        self.target = (HOST, target_port)
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.2)  # the accept loop checks for close() this often
        self.port = self.listener.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self.cuts = 0
        self.refused = 0  # connections closed unanswered while refusing
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._refusing = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="cut-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        # Ends when either side closes (or cut() closes both): then the whole pair goes.
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            _close(sock)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut(self, refuse: bool = False) -> int:
        """Closes every connection through the proxy; with `refuse`, new ones too until `restore()`. Returns how
        many were cut."""
        with self._lock:
            self._refusing = refuse
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            for sock in pair:
                _close(sock)
        self.cuts += 1
        return len(pairs)

    def restore(self) -> None:
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self.listener)
        self._thread.join(timeout=2)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a FIN now, whatever other thread still holds the socket
    except OSError:
        pass
    sock.close()
