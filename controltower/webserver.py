"""Serve the screen and the API (one WSGI app: Dash's Flask server) from a background thread,
with werkzeug's threaded server. Start and stop are bounded in time, so the control tower and
the tests can run it beside their event loop.

    server = WebServer(create_app(ctx), host="127.0.0.1", port=0).start()
    server.url        # http://127.0.0.1:<the port actually bound>
    server.stop()
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

log = logging.getLogger(__name__)


class _RequestHandler(WSGIRequestHandler):
    """Access log lines at DEBUG on this module's logger: at 1 Hz per open screen, werkzeug's
    default (INFO to stderr) would drown the product's own log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s", self.command, self.path, code)


class WebServer:
    """A WSGI app (a Flask app, or a Dash app whose `.server` is used) served in a daemon thread.
    `port=0` binds a free port; `.port` is the one bound once started."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8050):
        # A Dash app is not itself the WSGI app its Flask server is; a Flask app is both.
        self.wsgi_app = app.server if hasattr(app, "server") and callable(getattr(app, "server")) else app
        self.host = host
        self._requested_port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> WebServer:
        """Bind and serve in the background; returns self. Raises OSError when the port is taken."""
        if self._server is not None:
            raise RuntimeError("the web server is already started")
        try:
            self._server = make_server(
                self.host, self._requested_port, self.wsgi_app, threaded=True, request_handler=_RequestHandler
            )
        except SystemExit:
            # werkzeug exits the process when it cannot bind (after printing why); a library must not.
            raise OSError(
                errno.EADDRINUSE, f"cannot listen on {self.host}:{self._requested_port} (address in use or not available)"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"web:{self.port}", daemon=True
        )
        self._thread.start()
        log.info("screen and API at %s", self.url)
        return self

    @property
    def port(self) -> int:
        """The bound port once started, else the one asked for."""
        return self._server.server_port if self._server is not None else self._requested_port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting requests and close the socket, waiting at most about `timeout` seconds.
        Requests still running finish in their own daemon threads. Safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        # shutdown() waits for serve_forever to notice, without a timeout of its own: run it aside.
        stopper = threading.Thread(target=server.shutdown, name="web:stop", daemon=True)
        stopper.start()
        stopper.join(timeout)
        if thread is not None:
            thread.join(max(0.1, timeout / 2))
            if thread.is_alive():
                log.warning("the web server thread did not stop within %.1f s", timeout)
        server.server_close()
        self._server = None
        self._thread = None

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
