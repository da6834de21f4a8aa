"""Ledger: the shared library the command server, projector and query server import."""
