"""Chooses the event store and view store adapters from the environment.

The only module that names adapters: servicers, projections and the domain see ports.
"""

from __future__ import annotations

from ledger.eventstore.port import EventStore
from ledger.settings import Env, data_dir, env_choice, env_float
from ledger.views.port import ViewStore

EVENT_STORES = ("sqlite",)
VIEW_STORES = ("sqlite",)


def event_store_from_env(env: Env) -> EventStore:
    kind = env_choice(env, "LEDGER_EVENT_STORE", "sqlite", EVENT_STORES)
    poll = env_float(env, "LEDGER_SQLITE_POLL_SECONDS", 0.002, minimum=0.0005, maximum=1.0)
    assert kind == "sqlite"
    from ledger.eventstore.sqlite import SqliteEventStore

    return SqliteEventStore(data_dir(env) / "events.sqlite3", poll_interval=poll)


def view_store_from_env(env: Env) -> ViewStore:
    kind = env_choice(env, "LEDGER_VIEW_STORE", "sqlite", VIEW_STORES)
    assert kind == "sqlite"
    from ledger.views.sqlite import SqliteViewStore

    return SqliteViewStore(data_dir(env) / "views.sqlite3")
