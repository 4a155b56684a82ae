"""OpenTelemetry tracing: one span per sink write attempt, with its attributes, outcome and
error; current while the sink writes; nothing imported when unused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import writebehind as wb
from tests.conftest import Open
from writebehind.integrations.otel import SPAN_NAME, OTelTracing, error_type
from writebehind.testing import FlakySink, MemorySink

FAR = 3600.0
FAST_RETRY = wb.RetryPolicy(base=0.001, cap=0.001)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(exporter))
    yield p
    p.shutdown()


def spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The writebehind spans, in the order they ended."""
    return [s for s in exporter.get_finished_spans() if s.name == SPAN_NAME]


def attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(key)


async def test_one_span_per_write_attempt_with_its_attributes(
    api: Open, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """25 records in batches of 10: one INTERNAL span per write, sizes adding up to 25,
    each committed on attempt 1, with the batcher, sink and flush reason."""
    sink = MemorySink()
    tracing = OTelTracing(tracer_provider=provider)
    async with api(sink, max_batch=10, linger=FAR, name="lane", instruments=[tracing]) as b:
        for n in range(25):
            b.add_nowait({"n": n, "secret": "record-data"})
        await b.flush()
    got = spans(exporter)
    assert len(got) == sink.writes == 3
    assert sum(attr(s, "writebehind.batch.size") for s in got) == 25
    for s in got:
        assert s.kind is SpanKind.INTERNAL
        assert s.status.status_code is StatusCode.UNSET
        assert attr(s, "writebehind.batcher") == "lane"
        assert attr(s, "writebehind.sink") == repr(sink)
        assert attr(s, "writebehind.attempt") == 1
        assert attr(s, "writebehind.outcome") == "committed"
        assert attr(s, "error.type") is None
        assert "record-data" not in str(dict(s.attributes or {}))
    reasons = [attr(s, "writebehind.flush_reason") for s in got]
    assert set(reasons) <= {"size", "flush"}  # which cut the middle batch is a race
    assert reasons[-1] == "flush"  # the last 5 records wait for flush()


async def test_a_failed_then_retried_batch_gives_two_spans(
    api: Open, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Attempt 1 fails (outcome retry, ERROR status, error.type, the exception recorded);
    attempt 2 commits."""
    sink = FlakySink(fail_first=1)
    tracing = OTelTracing(tracer_provider=provider)
    async with api(sink, linger=FAR, retry=FAST_RETRY, instruments=[tracing]) as b:
        for n in range(4):
            b.add_nowait({"n": n})
        await b.flush()
    first, second = spans(exporter)
    assert [attr(s, "writebehind.outcome") for s in (first, second)] == ["retry", "committed"]
    assert [attr(s, "writebehind.attempt") for s in (first, second)] == [1, 2]
    assert attr(first, "error.type") == "writebehind.RetriableSinkError"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "writebehind.RetriableSinkError"
    (event,) = first.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "writebehind.RetriableSinkError"
    assert second.status.status_code is StatusCode.UNSET


async def test_a_poison_record_shows_split_and_dead_lettered_spans(
    api: Open, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """[0,1,2,3] with 3 poisoned: split, [0,1] committed, split, [2] committed, [3]
    dead-lettered; every failed span is an ERROR with the permanent error's type."""
    sink = FlakySink(poison=lambda r: r["n"] == 3)
    tracing = OTelTracing(tracer_provider=provider)
    async with api(sink, max_batch=4, linger=FAR, instruments=[tracing]) as b:
        for n in range(4):
            b.add_nowait({"n": n})
        await b.flush()
    outcome, size = "writebehind.outcome", "writebehind.batch.size"
    got = [(attr(s, outcome), attr(s, size)) for s in spans(exporter)]
    assert got == [
        ("split", 4),
        ("committed", 2),
        ("split", 2),
        ("committed", 1),
        ("dead_lettered", 1),
    ]
    for s in spans(exporter):
        failed = attr(s, "writebehind.outcome") != "committed"
        assert (s.status.status_code is StatusCode.ERROR) is failed
        assert attr(s, "error.type") == ("writebehind.PermanentSinkError" if failed else None)
        assert len(s.events) == int(failed)


async def test_the_span_is_current_while_the_sink_writes(
    api: Open, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A span the sink starts (a driver's, say) is a child of the write span."""
    tracer = provider.get_tracer("driver")

    class DriverSink(MemorySink):
        async def write(self, batch: list[Any]) -> None:
            with tracer.start_as_current_span("driver.query"):
                await super().write(batch)

    tracing = OTelTracing(tracer_provider=provider)
    async with api(DriverSink(), linger=FAR, instruments=[tracing]) as b:
        b.add_nowait({"n": 1})
        await b.flush()
    (write,) = spans(exporter)
    (child,) = [s for s in exporter.get_finished_spans() if s.name == "driver.query"]
    assert child.parent is not None
    assert child.parent.span_id == write.context.span_id
    assert child.context.trace_id == write.context.trace_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # detached again


async def test_the_exception_message_has_secrets_scrubbed(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A DSN password in the error never reaches the span."""

    class Refusing(MemorySink):
        async def write(self, batch: list[Any]) -> None:
            raise ValueError("cannot reach postgresql://app:hunter2@db:5432/x")

    tracing = OTelTracing(tracer_provider=provider)
    async with wb.AsyncBatcher(Refusing(), linger=FAR, instruments=[tracing]) as b:
        b.add_nowait({"n": 1})
        await b.flush()
    (s,) = spans(exporter)
    assert attr(s, "error.type") == "ValueError"
    assert attr(s, "writebehind.outcome") == "dead_lettered"
    message = s.events[0].attributes["exception.message"]  # type: ignore[index]
    assert "hunter2" not in message
    assert "postgresql://app:***@db" in message
    everything = repr([(e.name, dict(e.attributes or {})) for e in s.events])
    everything += repr(dict(s.attributes or {})) + repr(s.status)
    assert "hunter2" not in everything  # the stack trace included
    assert "exception.stacktrace" in everything


def test_error_type_is_the_canonical_class_name() -> None:
    """Builtins bare, everything else module-qualified (writebehind's under writebehind)."""
    assert error_type(TimeoutError()) == "TimeoutError"
    assert error_type(wb.WriteTimeout("x")) == "writebehind.WriteTimeout"
    assert error_type(subprocess.TimeoutExpired("x", 1)) == "subprocess.TimeoutExpired"


def test_importing_writebehind_never_imports_opentelemetry() -> None:
    """Neither the core nor the integration module imports opentelemetry."""
    code = (
        "import sys, writebehind, writebehind.integrations.otel\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the package, constructing the instrument says what to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(wb.ConfigError, match=r"pip install 'writebehind\[otel\]'"):
        OTelTracing()


async def test_write_spans_start_their_own_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A batcher started inside a span does not hang every later write under it."""
    tracing = OTelTracing(tracer_provider=provider)
    with provider.get_tracer("app").start_as_current_span("request") as request:
        batcher = wb.AsyncBatcher(MemorySink(), linger=FAR, instruments=[tracing])
        await batcher.start()
    batcher.add_nowait({"n": 1})
    await batcher.close()
    (write,) = spans(exporter)
    assert write.parent is None
    assert write.context.trace_id != request.get_span_context().trace_id
