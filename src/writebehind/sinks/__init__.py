"""Sinks: where batches land. Any object with ``async def write(self, batch)`` is one."""

from ._protocol import Sink
from .callable import CallableSink
from .sqlite import SQLiteSink

__all__ = ["CallableSink", "SQLiteSink", "Sink"]
