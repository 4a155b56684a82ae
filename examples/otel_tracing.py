"""Trace every sink write with OpenTelemetry: one span per attempt.

Run: python examples/otel_tracing.py  (needs ``pip install 'writebehind[otel]'`` and, to
export, ``opentelemetry-sdk``)

The sink's first write fails (the batch is retried) and one record is poison (the batch is
split until it is isolated and dead-lettered). Spans go to an in-memory exporter and are
printed one line each; in a service, give the ``TracerProvider`` a ``BatchSpanProcessor``
with your exporter (OTLP, say). The span is current while the sink writes, so a traced
driver's spans nest under it (here: ``sink.query``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import writebehind as wb
from writebehind.integrations.otel import OTelTracing
from writebehind.testing import FlakySink

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
driver = provider.get_tracer("my-driver")


class TracedSink(FlakySink):
    """A FlakySink whose writes open a span, as an instrumented database driver would."""

    async def write(self, batch: list[Any]) -> None:
        with driver.start_as_current_span("sink.query"):
            await super().write(batch)


async def main() -> None:
    sink = TracedSink(fail_first=1, poison=lambda r: r["n"] == 6)
    retry = wb.RetryPolicy(base=0.01, cap=0.05)
    tracing = OTelTracing(tracer_provider=provider)
    async with wb.AsyncBatcher(sink, max_batch=8, linger=0.05, retry=retry,
                               instruments=[tracing], name="audit") as batcher:  # fmt: skip
        for n in range(16):
            await batcher.add({"n": n})
    provider.shutdown()
    names = {s.context.span_id: s.name for s in exporter.get_finished_spans()}
    for span in exporter.get_finished_spans():
        a = dict(span.attributes or {})
        parent = names.get(span.parent.span_id) if span.parent else None
        if span.name == "writebehind.write":
            print(
                f"{span.name} batcher={a['writebehind.batcher']} size={a['writebehind.batch.size']}"
                f" attempt={a['writebehind.attempt']} reason={a['writebehind.flush_reason']}"
                f" outcome={a['writebehind.outcome']} error.type={a.get('error.type', '-')}"
                f" status={span.status.status_code.name}"
            )
        else:
            print(f"  {span.name} (child of {parent})")
    print(batcher.stats())


if __name__ == "__main__":
    asyncio.run(main())
