"""The stats endpoint mounted in a Flask app with the thread-backed ``Batcher``.

Run: python examples/stats_wsgi.py
     (or serve it: gunicorn --app-dir examples -k gthread --workers 2 'stats_wsgi:create_app()'
      and watch it: writebehind top http://127.0.0.1:8000/writebehind)

``create_app()`` opens one ``Batcher`` per process (here into an in-memory sink; yours
would be a ``PostgresSink``), named after the pid, and mounts its stats endpoint at
``/writebehind`` with werkzeug's ``DispatcherMiddleware``: every gunicorn worker serves its
own batcher on the application's port, so workers never fight over a port. Run as a
script, it serves the app with the stdlib's ``wsgiref`` on a free port of 127.0.0.1, sends
itself a few heartbeats, reads its own ``/writebehind/stats`` and ``/events``, and exits 0.

Django: ``application = mount(get_wsgi_application(), "/writebehind", wsgi_app(batcher))``
in ``wsgi.py`` (``from writebehind.integrations.wsgi import mount, wsgi_app``).
"""

from __future__ import annotations

import atexit
import json
import os
import socketserver
import threading
import urllib.request
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import writebehind as wb
from writebehind.integrations.wsgi import wsgi_app
from writebehind.testing import MemorySink


def create_app(batcher: wb.Batcher | None = None) -> Flask:
    """The Flask app; without ``batcher``, it opens this process's own (closed at exit)."""
    if batcher is None:
        batcher = wb.Batcher(MemorySink(), key="id", linger=0.05, name=f"heartbeats-{os.getpid()}")
        batcher.start()
        atexit.register(batcher.close)
    app = Flask(__name__)
    served = batcher

    @app.post("/heartbeat/<agent>")
    def heartbeat(agent: str) -> dict[str, Any]:
        served.add({"id": agent})  # blocks this request only if the buffer is full
        return {"accepted": True, "worker": os.getpid()}

    # an internal route: it has no authentication (see docs/stats-endpoint.md)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/writebehind": wsgi_app(batcher)}
    )
    return app


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a following /events request holds a thread


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _request(url: str, method: str = "GET") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
        body: bytes = r.read()
        return body


def main() -> None:
    """Serve the app on a free port, send it three heartbeats, read its stats, stop."""
    with wb.Batcher(MemorySink(), key="id", linger=0.05, name="heartbeats") as batcher:
        server = make_server(
            "127.0.0.1", 0, create_app(batcher), server_class=_Server, handler_class=_QuietHandler
        )
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}"
        for agent in ("a", "b", "c"):
            _request(f"{base}/heartbeat/{agent}", "POST")
        batcher.flush()
        doc = json.loads(_request(f"{base}/writebehind/stats"))
        events = _request(f"{base}/writebehind/events?since=1&follow=0").splitlines()
        print(
            f"{base}/writebehind/stats: {doc['batcher']} {doc['state']}, accepted "
            f"{doc['stats']['accepted']}, committed {doc['stats']['committed']}; "
            f"{len(events)} event(s) held"
        )
        assert doc["stats"]["committed"] == 3
        server.shutdown()
        server.server_close()
        thread.join()


if __name__ == "__main__":
    main()
