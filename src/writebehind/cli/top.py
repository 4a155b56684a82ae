"""``writebehind top``: watch running batchers through their stats endpoints, one or several.

The application opts in with the standalone server
(``writebehind.integrations.serve.serve(batcher)``) or by mounting the ASGI/WSGI app in its
own server (``writebehind.integrations.asgi.asgi_app``, ``...wsgi.wsgi_app``). ``top``
polls ``GET /stats`` and ``GET /events?since=N&follow=0`` of each endpoint every
``--interval`` seconds and shows their sum (one endpoint per worker process: each has its
own batcher) and, with several, one line per endpoint: the state, rates over the interval,
pending and in-flight records against ``max_pending``, the counters, write latency and
batch size from the recent ``BatchCommitted`` events, and the last notable events.

``--once`` prints one snapshot (two polls ``--interval`` apart, for the rates) and exits;
``--plain`` prints text, not a live rich table (also used when rich is not installed). An
endpoint that is down is shown as down; when none answers, exit 1 (exit 0 if all were seen
closing). The client is in ``_top_client``, the sums in ``_top_model``, the view in
``_top_view``; ``_display`` shows it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .._errors import ConfigError
from ._args import positive_float
from ._display import make_screen
from ._top_client import endpoint_url
from ._top_model import Fleet
from ._top_view import TopView

__all__ = ["register", "run"]


def register(commands: Any) -> None:
    """Add the ``top`` subcommand to the ``writebehind`` parser's subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "top",
        help="watch running batchers through their stats endpoints",
        description=(
            "Show a live view of the batchers whose applications serve the stats endpoint "
            "(writebehind.integrations.serve.serve(batcher), or the ASGI/WSGI app mounted in "
            "the application's server): state, rates, pending and in flight, counters, write "
            "latency, batch size and the last notable events. Several endpoints (one per "
            "worker process) are summed, with one line each."
        ),
    )
    parser.set_defaults(command=run, command_name="top")
    parser.add_argument(
        "urls",
        nargs="*",
        type=endpoint_url,
        metavar="URL",
        help="an endpoint: http://HOST:PORT, plus the path where the app is mounted, if any "
        "(http://127.0.0.1:8000/writebehind)",
    )
    parser.add_argument(
        "--url",
        dest="more_urls",
        action="append",
        type=endpoint_url,
        default=[],
        help="an endpoint, as URL (repeatable)",
    )
    parser.add_argument(
        "--port",
        dest="ports",
        action="append",
        type=_port,
        default=[],
        help="the standalone endpoint's port on 127.0.0.1 (repeatable)",
    )
    parser.add_argument(
        "--interval", type=_interval, default=1.0, help="seconds between refreshes (default: 1)"
    )
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--plain", action="store_true", help="plain text instead of rich")


def urls_of(args: argparse.Namespace) -> list[str]:
    """Every endpoint named on the command line, in order, without repeats."""
    urls = [*args.urls, *args.more_urls, *(f"http://127.0.0.1:{p}" for p in args.ports)]
    if not urls:
        raise ConfigError("name at least one endpoint: writebehind top URL [URL ...]")
    return list(dict.fromkeys(u.rstrip("/") for u in urls))


def run(args: argparse.Namespace) -> int:
    """The ``top`` subcommand."""
    fleet = Fleet(urls_of(args))
    screen = make_screen(plain=args.plain, live=not args.once)
    try:
        fleet.poll()
        if args.once:
            time.sleep(args.interval)
            fleet.poll()
            if not fleet.up:
                return _none_up(fleet)
            screen.show(TopView(fleet))
            return 0
        while True:
            if not fleet.up:
                screen.stop()
                return _none_up(fleet)
            screen.show(TopView(fleet))
            time.sleep(args.interval)
            fleet.poll()
    except KeyboardInterrupt:
        return 0
    finally:
        screen.stop()


def _none_up(fleet: Fleet) -> int:
    """No endpoint answers: exit 0 if every batcher was seen closing, else 1."""
    if fleet.all_closed:
        gone = ", ".join(e.url for e in fleet.endpoints)
        print(f"writebehind top: the batcher closed; {gone} is gone", file=sys.stderr)
        return 0
    for e in fleet.endpoints:
        print(
            f"writebehind top: cannot read the stats endpoint at {e.url}: {e.error}",
            file=sys.stderr,
        )
    print(
        "(the application serves it with writebehind.integrations.serve.serve(batcher), or "
        "mounts writebehind.integrations.asgi.asgi_app / wsgi.wsgi_app)",
        file=sys.stderr,
    )
    return 1


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def _interval(text: str) -> float:
    value = positive_float(text)
    if value >= 3600:
        raise argparse.ArgumentTypeError(f"must be seconds > 0 (and < 3600), got {text}")
    return value
