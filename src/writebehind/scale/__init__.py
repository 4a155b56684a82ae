"""Beyond one process: a capacity shared by a fleet through Redis
(``pip install 'writebehind[redis]'``; redis-py is imported when the capacity starts)."""

from .redis_capacity import RedisSharedCapacity

__all__ = ["RedisSharedCapacity"]
