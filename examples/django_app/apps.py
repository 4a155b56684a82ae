"""``AppConfig.ready`` opens this process's ``Batcher`` (see examples/deploy_django.py)."""

from __future__ import annotations

import atexit

from django.apps import AppConfig
from django.conf import settings

import writebehind as wb

_batcher: wb.Batcher | None = None


def current_batcher() -> wb.Batcher | None:
    """This process's batcher (None until ``ready()`` ran)."""
    return _batcher


class BatchingConfig(AppConfig):
    name = "django_app"

    def ready(self) -> None:
        """Open the batcher once per process; ``batcher.close()`` at exit flushes it."""
        global _batcher
        if _batcher is not None:  # ready() can run twice (tests that reload apps)
            return
        conf = settings.WRITEBEHIND
        sink = wb.PostgresSink(conf["dsn"], table=conf["table"], pool_size=2)
        batcher = wb.Batcher(sink, linger=1.0, close_timeout=5.0, name="django")
        batcher.start()
        atexit.register(batcher.close)  # the library would close it too, with a warning
        _batcher = batcher
