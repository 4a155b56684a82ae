"""The ``writebehind`` command line.

``writebehind demo`` simulates a fleet of agents sending heartbeats through an
``AsyncBatcher`` into SQLite (or PostgreSQL with ``--dsn``) and compares the result with
writing each heartbeat on its own. The CLI uses only the standard library (and asyncpg for
``--dsn``); ``rich`` (the ``writebehind[cli]`` extra) is imported lazily for the live
display, and plain text lines replace it when it is missing.
"""
