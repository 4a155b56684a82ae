"""Sinks: where batches land. Any object with ``async def write(self, batch)`` is one."""

from ._protocol import Sink, WriteResult
from .callable import CallableSink
from .postgres import PostgresSink
from .redis import RedisSink
from .redis_stream import RedisStreamSink
from .sqlite import SQLiteSink

__all__ = [
    "CallableSink",
    "PostgresSink",
    "RedisSink",
    "RedisStreamSink",
    "SQLiteSink",
    "Sink",
    "WriteResult",
]
