from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from flask import Flask

from controltower.webserver import WebServer


def _app() -> Flask:
    app = Flask("test-webserver")
    app.get("/ping")(lambda: "pong")
    return app


def test_port_zero_binds_a_free_port_and_stop_is_bounded_and_idempotent() -> None:
    server = WebServer(_app(), host="127.0.0.1", port=0)
    assert server.port == 0 and not server.running
    server.start()
    try:
        assert server.port > 0 and server.running
        assert server.url == f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(server.url + "/ping", timeout=5) as resp:
            assert resp.read() == b"pong"
    finally:
        started = time.monotonic()
        server.stop(timeout=3)
        assert time.monotonic() - started < 3
    assert not server.running
    server.stop()  # twice is fine
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_a_taken_port_is_an_error_at_start() -> None:
    with WebServer(_app(), port=0) as first:
        with pytest.raises(OSError):
            WebServer(_app(), port=first.port).start()
