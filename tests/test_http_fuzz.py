"""Hypothesis fuzzing of the standalone stats server's request parser (``integrations._http``):
arbitrary bytes never crash or hang it, and malformed requests are answered 400."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import writebehind as wb
from writebehind.integrations import _http
from writebehind.integrations.serve import SyncStatsServer, serve_sync
from writebehind.testing import MemorySink

STATUSES = {200, 400, 403, 404, 405, 414, 431}  # what a request that arrives can get
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

URL_PIECES = [b"/", b"//", b"[", b"]", b"?", b"#", b"@", b":", b"%", b"%zz", b"%2F", b"stats"]
URL_PIECES += [b"events", b"health", b"since=1", b"follow=0", b"&", b"=", b";", b"..", b"\x80"]
tokens = st.sampled_from([b"GET", b"POST", b"get", b"HEAD", b"G\x00T", b"", b"GET GET"])
targets = st.one_of(
    st.sampled_from([b"/stats", b"/health", b"/events", b"/events?since=3&follow=0", b"*"]),
    st.tuples(  # URL syntax, densely
        st.sampled_from([b"/", b"//", b"/stats", b"/events", b"*", b""]),
        st.lists(st.sampled_from(URL_PIECES), max_size=5).map(b"".join),
    ).map(b"".join),
    st.text(alphabet="/?#[]@:%&=;+-._~ sincefolw0123456789", max_size=40).map(str.encode),
    st.binary(max_size=40),
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 x"])
header_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"Host: 127.0.0.1",
                b"Host: [::1]:80",
                b"Host: evil.example",
                b"Host:",
                b"Content-Length: 0",
                b"Content-Length: 5",
                b"Transfer-Encoding: chunked",
                b"X-Bad Name: 1",
                b": empty name",
            ]
        ),
        st.binary(max_size=60).filter(lambda b: b"\r\n" not in b),
    ),
    max_size=6,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request made of plausible and broken parts, with a complete head."""
    method = draw(st.one_of(st.just(b"GET"), tokens))
    version = draw(st.one_of(st.just(b"HTTP/1.1"), versions))
    line = b" ".join([method, draw(targets), version])
    host = [b"Host: 127.0.0.1"] if draw(st.booleans()) else []
    head = [line, *host, *draw(header_lines)]
    return b"\r\n".join(head) + b"\r\n\r\n"


anything = st.one_of(
    requests(), requests(), st.binary(max_size=2048), st.binary(min_size=4000, max_size=9000)
)
# urlsplit() read a target starting with "//" as a netloc and raised ValueError on "//["
# (found by a Hypothesis probe, fixed in _http.route); kept as an explicit example
NETLOC = b"GET //[ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def parse(data: bytes) -> _http.Request | int | None:
    """The parsed request, the error status, or None when the input ended too early."""
    reader = asyncio.StreamReader(limit=_http.MAX_LINE)
    reader.feed_data(data)
    reader.feed_eof()
    try:
        async with asyncio.timeout(2):
            return await _http.read_request(reader, _http.ROUTES, loopback=True)
    except _http.HttpError as exc:
        return exc.status
    except asyncio.IncompleteReadError:
        return None


@settings(FUZZ, max_examples=1000)
@given(anything)
@example(NETLOC)
def test_the_parser_accepts_refuses_or_waits_for_more_and_nothing_else(data: bytes) -> None:
    """Any bytes: a valid route with allowed parameters, an HTTP error status, or "ended
    too early"; never another exception, never a wait once the input has ended."""
    got = asyncio.run(parse(data))
    if isinstance(got, _http.Request):
        assert got.path in _http.ROUTES
        assert set(got.query) <= set(_http.ROUTES[got.path])
        assert data.startswith(b"GET ")
    elif isinstance(got, int):
        assert got in STATUSES - {200}
    else:
        assert b"\r\n\r\n" not in data[: _http.MAX_HEADER_BYTES]


@FUZZ
@given(st.binary(max_size=200).filter(lambda b: b"\r\n" not in b))
def test_a_request_line_without_three_parts_is_400(junk: bytes) -> None:
    """A complete request whose first line is not ``METHOD TARGET VERSION`` is a 400."""
    if len(junk.split(b" ")) == 3:
        junk += b" extra"
    got = asyncio.run(parse(junk + b"\r\nHost: 127.0.0.1\r\n\r\n"))
    assert got == 400


@pytest.fixture(scope="module")
def server() -> Iterator[SyncStatsServer]:
    with wb.Batcher(MemorySink(), name="fuzzed") as batcher, serve_sync(batcher) as srv:
        batcher.add({"id": 1})
        yield srv


class Errors(logging.Handler):
    """Every ERROR logged (asyncio reports a handler that raised as one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def exchange(srv: SyncStatsServer, data: bytes) -> bytes:
    """Send ``data`` and end the request side; everything the server answers."""
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it answered and closed before taking all of it (a 414 or 431)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


@FUZZ
@given(anything)
@example(NETLOC)
def test_the_server_answers_any_bytes_and_stays_up(server: SyncStatsServer, data: bytes) -> None:
    """Over a real connection any bytes get a well-formed answer with a known status (or,
    for input that ends before a complete request, a closed connection); the handler never
    raises (nothing logged at ERROR), and the server goes on answering."""
    errors = Errors()
    logging.getLogger().addHandler(errors)
    try:
        answer = exchange(server, data)
    finally:
        logging.getLogger().removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]
    if not answer:
        assert b"\r\n\r\n" not in data
        return
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), answer[:100]
    assert int(status_line.split(b" ")[1]) in STATUSES
    assert b"\r\n\r\n" in answer


def test_after_the_fuzzing_it_still_serves(server: SyncStatsServer) -> None:
    """A valid request after all that still gets the stats; no connection is left open."""
    answer = exchange(server, b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b'"batcher":"fuzzed"' in answer
    deadline = time.monotonic() + 5  # each handler forgets its connection once it closed
    while server.server.connections:
        assert time.monotonic() < deadline, server.server.connections
        time.sleep(0.01)


def test_a_client_that_never_finishes_its_request_gets_408(
    server: SyncStatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that stops arriving halfway is answered 408 after the request timeout
    (shortened here), so a slow client cannot hold a connection."""
    monkeypatch.setattr(_http, "REQUEST_TIMEOUT", 0.3)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: 127.0")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")
