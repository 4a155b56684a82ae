"""Fault tests against real servers: poison records, restarts, outages, locks."""
