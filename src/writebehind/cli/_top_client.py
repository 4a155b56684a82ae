"""``writebehind top``'s HTTP client: ``GET /stats`` and ``GET /events`` of one endpoint.

An endpoint is a base URL: ``http://HOST:PORT`` for the standalone server, or with the path
the application mounted the ASGI/WSGI app at (``http://HOST:PORT/writebehind``). Stdlib
``http.client``, one short-lived connection per request, a timeout on each.
"""

from __future__ import annotations

import argparse
import http.client
import json
from typing import Any
from urllib.parse import urlsplit

__all__ = ["TIMEOUT", "Client", "Unreachable", "endpoint_url"]

TIMEOUT = 5.0  # seconds for one request


class Unreachable(Exception):
    """The endpoint did not answer, or answered something that is not the stats endpoint."""


class Client:
    """A tiny HTTP client for one stats endpoint."""

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        parts = urlsplit(url)
        self.url = url.rstrip("/")
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout

    def get(self, path: str) -> bytes:
        """The body of ``GET prefix+path`` (status 200), or :class:`Unreachable`."""
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", self.prefix + path)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if response.status != 200:
            text = body.decode("utf-8", "replace").strip()[:200]
            raise Unreachable(f"GET {self.prefix}{path} answered {response.status}: {text}")
        return body

    def stats(self) -> dict[str, Any]:
        """``GET /stats`` as a dict."""
        try:
            doc = json.loads(self.get("/stats"))
        except ValueError:
            raise Unreachable("GET /stats did not answer JSON: is this a stats endpoint?") from None
        if not isinstance(doc, dict) or doc.get("schema") != 1:
            raise Unreachable("GET /stats answered an unknown document (schema 1 expected)")
        return doc

    def events(self, since: int) -> list[dict[str, Any]]:
        """The events held from ``since`` on (``follow=0``: the response ends)."""
        body = self.get(f"/events?since={since}&follow=0")
        try:
            return [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError:
            raise Unreachable("GET /events did not answer JSON lines") from None


def endpoint_url(text: str) -> str:
    """An argument type: ``http(s)://HOST:PORT[/PATH]`` (the path: where the app is mounted)."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port is None
        or parts.query
        or parts.fragment
    ):
        raise argparse.ArgumentTypeError(f"expected http://HOST:PORT[/PATH], got {text!r}")
    return text
