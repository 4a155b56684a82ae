"""The ``writebehind`` command line.

``writebehind demo`` simulates a fleet of agents sending heartbeats into SQLite through an
``AsyncBatcher`` and compares the result with writing each heartbeat on its own. The CLI
uses only the standard library; ``rich`` (the ``writebehind[cli]`` extra) is imported
lazily for the live display, and plain text lines replace it when it is missing.
"""
