"""Recipe: Django with the sync ``Batcher``, opened in ``AppConfig.ready``.

The app ``django_app`` (examples/django_app/apps.py) opens one batcher per process in its
``ready()``, which Django runs once per process when it sets itself up, and registers
``batcher.close`` with ``atexit``: leaving the process (a WSGI server's worker ending, a
management command returning) flushes what the batcher holds. The view below hands one
record per request to it and answers at once; the records reach a PostgreSQL table in
batches (appended: the table has no key). ``/writebehind`` is the stats endpoint of the
process that answers (see docs/stats-endpoint.md).

This file is the project: the settings are made in code (``settings.configure``) and
``get_application()`` is the WSGI application factory. Serve it
(``pip install 'writebehind[postgres]' django gunicorn``)::

    gunicorn --chdir examples -k gthread --workers 2 'deploy_django:get_application()'
    gunicorn --chdir examples -k gthread --workers 2 --preload 'deploy_django:get_application()'

Without ``--preload`` each gunicorn worker sets Django up, so each has its own batcher.
With ``--preload`` the master sets Django up before forking, and the library restarts the
batcher afresh in each worker at its first use (see docs/deployment.md).

Run as a script (``python examples/deploy_django.py``) it creates a table, serves the
project under gunicorn with two workers on a free port of 127.0.0.1, sends it 200
requests, stops gunicorn with SIGTERM, counts the rows and drops the table. Set
``WB_PG_DSN`` for another server than ``postgresql://root@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_POST

DSN = os.environ.get("WB_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
TABLE = os.environ.get("WB_TABLE", "deploy_requests")


def configure() -> None:
    """Django's settings, in code, and ``django.setup()`` (which runs ``ready()``)."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="not-a-secret: this example has no sessions or signing",
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        ROOT_URLCONF="deploy_django",
        INSTALLED_APPS=["django_app.apps.BatchingConfig"],
        MIDDLEWARE=[],
        DATABASES={},
        WRITEBEHIND={"dsn": DSN, "table": TABLE},
    )
    django.setup()


@require_POST
def record(request: HttpRequest, request_id: str) -> JsonResponse:
    from django_app.apps import current_batcher

    batcher = current_batcher()
    assert batcher is not None, "django_app is not in INSTALLED_APPS"
    batcher.add({"request_id": request_id, "pid": os.getpid()})  # blocks only when full
    return JsonResponse({"accepted": True, "pid": os.getpid()})


urlpatterns = [path("records/<str:request_id>", record)]


def get_application() -> Any:
    """The WSGI application: Django, with this process's stats endpoint at /writebehind
    (an internal route: it has no authentication)."""
    configure()
    from django.core.wsgi import get_wsgi_application

    from django_app.apps import current_batcher
    from writebehind.integrations.wsgi import mount, wsgi_app

    return mount(get_wsgi_application(), "/writebehind", wsgi_app(current_batcher))


def main() -> None:
    """Create a table, serve the project under gunicorn, send it requests, SIGTERM."""
    import concurrent.futures
    import http.client
    import signal
    import socket
    import subprocess
    import time
    import uuid

    import psycopg

    table = f"deploy_django_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (request_id text NOT NULL, pid integer NOT NULL)")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    host, port = sock.getsockname()
    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, "-m", "gunicorn", "-k", "gthread"]
    command += ["--workers", "2", "--threads", "8", "--graceful-timeout", "10"]
    command += ["--no-control-socket", "--log-level", "warning"]
    command += ["--bind", f"fd://{sock.fileno()}", "deploy_django:get_application()"]
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WB_TABLE": table, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    server = subprocess.Popen(command, pass_fds=[sock.fileno()], env=env, start_new_session=True)
    sock.close()

    def post(n: int) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=20)
        try:
            conn.request("POST", f"/records/r{n}")
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(200)))
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
        took = time.monotonic() - started
        with psycopg.connect(DSN, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT count(*), count(DISTINCT request_id) FROM {table}"
            ).fetchone()
    finally:
        if server.poll() is None:  # something went wrong: end it, workers included
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")
    assert row is not None
    ok = statuses.count(200)
    print(f"{ok} of 200 requests answered 200; {row[0]} rows, {row[1]} distinct; gunicorn "
          f"exited {code} {took:.1f} s after SIGTERM")  # fmt: skip
    assert (ok, row[0], row[1], code) == (200, 200, 200, 0)


if __name__ == "__main__":
    main()
