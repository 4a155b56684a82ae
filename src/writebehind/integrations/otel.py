"""OpenTelemetry tracing: one span per sink write attempt. Needs
``pip install 'writebehind[otel]'`` (the API; add an SDK to export); importing writebehind
never imports ``opentelemetry``, and a batcher without this instrument does no tracing work.

``OTelTracing`` is an :class:`~writebehind.Instrument`: the engine enters it around every
sink write attempt (never per record). Each span starts a trace of its own: a batch holds
records from many callers, and the flusher's task would otherwise inherit whatever context
was current when the batcher started. The span is current while the sink writes, so spans
of an instrumented driver (asyncpg, redis) nest under it. Its kind is ``INTERNAL``: one
write may issue several driver calls, and those are the ``CLIENT`` spans; a ``CLIENT`` span
here would count every database call twice in service maps.

Attributes (no record data, ever):

==============================  =================================================
``writebehind.batcher``         the batcher's ``name`` (its lane)
``writebehind.sink``            the sink's ``repr`` (secrets scrubbed)
``writebehind.batch.size``      records in this write
``writebehind.attempt``         1 for the first try, 2 for the first retry, ...
``writebehind.flush_reason``    ``size``, ``linger``, ``flush``, ``close`` or ``direct``
``writebehind.outcome``         ``committed``, ``retry``, ``split``, ``dead_lettered``
                                or ``cancelled``
``error.type``                  on failure: the exception's class (``module.Class``;
                                builtins bare), or ``cancelled``
==============================  =================================================

A failed attempt has status ``ERROR`` (description: the ``error.type``) and an ``exception``
event whose message has secrets scrubbed.
"""

from __future__ import annotations

import traceback
from typing import Any

from .._deadletter import scrub_secrets
from .._errors import ConfigError
from .._instrument import WriteAttempt

__all__ = ["SPAN_NAME", "OTelTracing", "error_type"]

SPAN_NAME = "writebehind.write"
"""The name of every span this instrument starts."""


def _require() -> tuple[Any, Any]:
    try:
        from opentelemetry import context, trace
    except ImportError as exc:
        raise ConfigError(
            "OTelTracing needs opentelemetry-api: pip install 'writebehind[otel]'"
        ) from exc
    return context, trace


def error_type(error: BaseException) -> str:
    """``error.type`` for an exception: its canonical class name (builtins bare)."""
    cls = type(error)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class OTelTracing:
    """An instrument that traces every sink write attempt as a span named
    ``writebehind.write``.

    ``batcher.add_instrument(OTelTracing())`` (or ``AsyncBatcher(..., instruments=[...])``).
    ``tracer_provider`` defaults to the global one (``opentelemetry.trace``).
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        context, trace = _require()
        from .. import __version__

        self._context = context
        self._trace = trace
        self._tracer = trace.get_tracer("writebehind", __version__, tracer_provider=tracer_provider)
        self._kind = trace.SpanKind.INTERNAL
        self._root = context.Context()  # a batch mixes many callers' records: its own trace
        self._error = trace.StatusCode.ERROR
        self._sinks: dict[str, str] = {}  # the sink's repr -> scrubbed, computed once

    def write(self, attempt: WriteAttempt) -> _Span:
        """The :class:`~writebehind.Instrument` hook: a span around one write attempt."""
        return _Span(self, attempt)

    def _sink(self, name: str) -> str:
        clean = self._sinks.get(name)
        if clean is None:
            if len(self._sinks) > 1000:  # sinks are few; never let odd reprs grow this
                self._sinks.clear()
            clean = self._sinks[name] = scrub_secrets(name)
        return clean


class _Span:
    """Starts the span and makes it current on enter; sets outcome and error on exit."""

    __slots__ = ("attempt", "span", "token", "tracing")

    def __init__(self, tracing: OTelTracing, attempt: WriteAttempt) -> None:
        self.tracing, self.attempt = tracing, attempt
        self.span: Any = None
        self.token: Any = None

    def __enter__(self) -> Any:
        t, a = self.tracing, self.attempt
        self.span = span = t._tracer.start_span(
            SPAN_NAME,
            context=t._root,
            kind=t._kind,
            attributes={
                "writebehind.batcher": a.batcher,
                "writebehind.sink": t._sink(a.sink),
                "writebehind.batch.size": a.size,
                "writebehind.attempt": a.attempt,
                "writebehind.flush_reason": a.reason,
            },
        )
        self.token = t._context.attach(t._trace.set_span_in_context(span))
        return span

    def __exit__(self, et: object, exc: BaseException | None, tb: object) -> None:
        t, a, span = self.tracing, self.attempt, self.span
        try:
            span.set_attribute("writebehind.outcome", a.outcome)
            error = a.error if a.error is not None else exc
            if error is not None or a.outcome == "cancelled":
                kind = "cancelled" if error is None else error_type(error)
                span.set_attribute("error.type", kind)
                if error is not None:
                    # the SDK would add the raw message again inside exception.stacktrace
                    trace = "".join(traceback.format_exception(error))
                    span.record_exception(
                        error,
                        attributes={
                            "exception.message": scrub_secrets(str(error)),
                            "exception.stacktrace": scrub_secrets(trace),
                        },
                    )
                span.set_status(t._trace.Status(t._error, kind))
        finally:
            t._context.detach(self.token)
            span.end()
