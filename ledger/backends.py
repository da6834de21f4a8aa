"""Chooses the event store and view store adapters from the environment.

The only module that names adapters: servicers, projections and the domain see ports.
"""

from __future__ import annotations

from ledger.eventstore.port import EventStore
from ledger.settings import (
    Env,
    SettingsError,
    data_dir,
    env_choice,
    env_float,
    env_required,
    env_str,
)
from ledger.views.port import ViewStore

EVENT_STORES = ("sqlite", "kurrentdb")
VIEW_STORES = ("sqlite", "mongodb")


def event_store_from_env(env: Env) -> EventStore:
    kind = env_choice(env, "LEDGER_EVENT_STORE", "sqlite", EVENT_STORES)
    if kind == "kurrentdb":
        uri = env_required(
            env,
            "KURRENTDB_URI",
            "when LEDGER_EVENT_STORE=kurrentdb, e.g. kurrentdb://localhost:2113?tls=false",
        )
        try:
            from ledger.eventstore.kurrentdb import KurrentDBEventStore
        except ImportError:
            raise SettingsError(
                "LEDGER_EVENT_STORE=kurrentdb needs kurrentdbclient: pip install -e '.[kurrentdb]'"
            ) from None
        try:
            return KurrentDBEventStore(uri)
        except ValueError as exc:
            raise SettingsError(
                f"KURRENTDB_URI is not a KurrentDB connection string: {exc}"
            ) from None
    poll = env_float(env, "LEDGER_SQLITE_POLL_SECONDS", 0.002, minimum=0.0005, maximum=1.0)
    from ledger.eventstore.sqlite import SqliteEventStore

    return SqliteEventStore(data_dir(env) / "events.sqlite3", poll_interval=poll)


def view_store_from_env(env: Env) -> ViewStore:
    kind = env_choice(env, "LEDGER_VIEW_STORE", "sqlite", VIEW_STORES)
    if kind == "mongodb":
        uri = env_required(env, "MONGODB_URI", "when LEDGER_VIEW_STORE=mongodb")
        database = env_str(env, "LEDGER_MONGODB_DATABASE", "ledger")
        try:
            from ledger.views.mongodb import MongoViewStore
        except ImportError:
            raise SettingsError(
                "LEDGER_VIEW_STORE=mongodb needs pymongo: pip install -e '.[mongodb]'"
            ) from None
        try:
            return MongoViewStore(uri, database)
        except ValueError as exc:
            raise SettingsError(f"MONGODB_URI / LEDGER_MONGODB_DATABASE: {exc}") from None
    from ledger.views.sqlite import SqliteViewStore

    return SqliteViewStore(data_dir(env) / "views.sqlite3")
