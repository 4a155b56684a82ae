"""Beyond one process (``pip install 'writebehind[redis]'``; redis-py is imported when
used): a capacity shared by a fleet through Redis, and the Redis Streams hand-off between
producers and flushers (``consume_stream``; its producer side is ``RedisStreamSink``)."""

from .redis_capacity import RedisSharedCapacity
from .streams import StreamReport, consume_stream

__all__ = ["RedisSharedCapacity", "StreamReport", "consume_stream"]
