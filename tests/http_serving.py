"""A throw-away HTTP server in a thread, for tests that need something to answer on one address."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def serving(handler: Callable[..., http.server.BaseHTTPRequestHandler], address: str = "127.0.0.1") -> Iterator[str]:
    """Serve `handler` on a free port of `address` (loopback or a veth address of this machine);
    yields the base URL; the server and its thread are gone when the block ends."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    server = http.server.ThreadingHTTPServer((address, port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
