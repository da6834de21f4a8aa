"""The backend mixes every end-to-end scenario runs on: the embedded stores, and each
production adapter on its stand-in server (see tests/standins)."""

from __future__ import annotations

from tests.standins.shared import kurrentdb_uri, mongodb_uri
from tests.support.processes import SQLITE, Backend, Stack, copy_sqlite_event_log

__all__ = ["BACKENDS", "KURRENTDB_EVENTS", "MONGODB_VIEWS", "SQLITE"]


def _point_at_source_log(source: Stack, target: Stack) -> None:
    """A rebuild on KurrentDB reads the source's own log (the same server, same positions)."""
    uri = source.env()["KURRENTDB_URI"]
    for process in target:
        process.env["KURRENTDB_URI"] = uri


# The production adapters, on stand-ins: SQLite events with MongoDB views (nx-27017), and
# KurrentDB events (the streams-protocol stand-in) with SQLite views.
MONGODB_VIEWS = Backend(
    "mongodb-views",
    env=lambda stack_id: {
        "LEDGER_VIEW_STORE": "mongodb",
        "MONGODB_URI": mongodb_uri(),
        "LEDGER_MONGODB_DATABASE": f"ledger_{stack_id}",
    },
    copy_event_log=copy_sqlite_event_log,
)
KURRENTDB_EVENTS = Backend(
    "kurrentdb-events",
    env=lambda stack_id: {
        "LEDGER_EVENT_STORE": "kurrentdb",
        "KURRENTDB_URI": kurrentdb_uri(stack_id),
    },
    copy_event_log=_point_at_source_log,
)
BACKENDS: dict[str, Backend] = {b.name: b for b in (SQLITE, MONGODB_VIEWS, KURRENTDB_EVENTS)}
