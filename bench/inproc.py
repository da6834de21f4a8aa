"""In-process measurements: Ledger's command path without gRPC, the eventsourcing peer,
long streams, building event logs fast, and the storage ceiling and projector floor for
catch-up."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from ledger.application.command_handler import CommandHandler
from ledger.banking.views import codec
from ledger.domain import accounts
from ledger.eventstore.codec import EventMetadata
from ledger.eventstore.port import NO_STREAM, NewEvent
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.eventstore.state_codec import JsonStateCodec

EVENTS_FILE = "events.sqlite3"
LONG_STREAM_ACCOUNT = "bulk-0"
"""(c)'s account with the long history, written by `build_streams`."""


def _handler(store: SqliteEventStore) -> CommandHandler[Any, Any, Any]:
    """Configured as the command server configures it."""
    return CommandHandler(
        store, accounts.accounts, codec, snapshots=JsonStateCodec(accounts.Account)
    )


async def _deposit(handler: CommandHandler[Any, Any, Any], account: str, amount: int) -> None:
    request_id = f"dep-{uuid.uuid4().hex}"
    command = accounts.DepositFunds(account, amount, "EUR", "bench", datetime.now(UTC))
    await handler.handle(account, command, request_id=request_id, fingerprint=request_id)


async def _open(handler: CommandHandler[Any, Any, Any], account: str) -> None:
    command = accounts.OpenAccount(account, f"Owner {account}", "EUR", datetime.now(UTC))
    await handler.handle(account, command, request_id=f"open-{account}", fingerprint=account)


async def open_accounts(data_dir: Path, ids: list[str], concurrency: int = 256) -> float:
    """Open accounts through the in-process command path (concurrently: group commit)."""
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (set-up, before timing)
    store = SqliteEventStore(data_dir / EVENTS_FILE)
    await store.open()
    started = time.perf_counter()
    try:
        handler = _handler(store)
        for i in range(0, len(ids), concurrency):
            await asyncio.gather(*(_open(handler, a) for a in ids[i : i + concurrency]))
    finally:
        await store.close()
    return time.perf_counter() - started


class SequentialDeposits(Protocol):
    """One side of the peer comparison, open across timed rounds: `run(count)` makes
    `count` more deposits, one after another, each committed before the next, and
    returns the seconds they took."""

    def run(self, count: int) -> float: ...


class LedgerDeposits:
    """Ledger's in-process command path: CommandHandler + SqliteEventStore, on one
    event loop kept between rounds (as the command server keeps its store open)."""

    def __init__(self, data_dir: Path, n_accounts: int) -> None:
        self._data_dir = data_dir
        self._ids = [f"peer-{i}" for i in range(n_accounts)]
        self._done = 0
        self._runner = asyncio.Runner()
        self._store = SqliteEventStore(data_dir / EVENTS_FILE)
        self._handler = _handler(self._store)

    def __enter__(self) -> LedgerDeposits:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._runner.run(self._open())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self._runner.run(self._store.close())
        finally:
            self._runner.close()

    async def _open(self) -> None:
        await self._store.open()
        for a in self._ids:
            await _open(self._handler, a)

    def run(self, count: int) -> float:
        return self._runner.run(self._deposits(count))

    async def _deposits(self, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            await _deposit(self._handler, self._ids[self._done % len(self._ids)], 10)
            self._done += 1
        return time.perf_counter() - started


class EventsourcingDeposits:
    """The same deposits through the eventsourcing library's Application on its SQLite
    (`cache`: with its aggregate cache, which it leaves off by default)."""

    def __init__(self, data_dir: Path, n_accounts: int, *, cache: bool) -> None:
        from bench.peer_es import Bank

        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(data_dir / ("es-cached.sqlite3" if cache else "es.sqlite3")),
        }
        if cache:
            env["AGGREGATE_CACHE_MAXSIZE"] = str(n_accounts * 2)
        self._app = Bank(env=env)
        self._ids = [self._app.open(f"peer-{i}") for i in range(n_accounts)]
        self._done = 0

    def __enter__(self) -> EventsourcingDeposits:
        return self

    def __exit__(self, *_: object) -> None:
        self._app.close()

    def run(self, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            self._app.deposit(self._ids[self._done % len(self._ids)], 10)
            self._done += 1
        return time.perf_counter() - started


def interleaved(sides: Sequence[SequentialDeposits], deposits: int, rounds: int) -> list[float]:
    """Each side's deposits per second over `deposits`, made in `rounds` rounds that take
    turns (A, B, C, A, B, C, ...): a drift in the machine's speed then weighs on every
    side alike, where one block after another would hand it to one side only."""
    seconds = [0.0] * len(sides)
    per_round = deposits // rounds
    for _ in range(rounds):
        for i, side in enumerate(sides):
            seconds[i] += side.run(per_round)
    return [per_round * rounds / s for s in seconds]


def _deposit_events(account: str, start_balance: int, count: int, tag: str) -> list[NewEvent]:
    out = []
    balance = start_balance
    for i in range(count):
        balance += 10
        event = accounts.FundsDeposited(
            account_id=account,
            amount_minor=10,
            currency="EUR",
            description="bench",
            balance_after_minor=balance,
            occurred_at=datetime.now(UTC),
        )
        name, data = codec.encode(event)
        request_id = f"{tag}-{i}"
        meta = EventMetadata(request_id, request_id, request_id, request_id).to_bytes()
        out.append(NewEvent(event_id=uuid.uuid4(), type=name, data=data, metadata=meta))
    return out


def _opened_event(account: str) -> NewEvent:
    name, data = codec.encode(
        accounts.AccountOpened(account, f"Owner {account}", "EUR", datetime.now(UTC))
    )
    meta = EventMetadata(f"open-{account}", account, f"open-{account}", "").to_bytes()
    return NewEvent(event_id=uuid.uuid4(), type=name, data=data, metadata=meta)


async def build_streams(
    data_dir: Path, names: Sequence[str], events_per_account: int, batch: int = 1000
) -> int:
    """Append a stream for each account in `names`, an opening and then deposits
    (`events_per_account` events in all), straight into the store, many streams at once
    (group commit); returns the head position."""
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (set-up, before timing)
    store = SqliteEventStore(data_dir / EVENTS_FILE)
    await store.open()

    async def one(account: str) -> None:
        stream = accounts.accounts.stream_for(account)
        version, written = NO_STREAM, 0
        pending: list[NewEvent] = [_opened_event(account)]
        while written < events_per_account:
            take = min(batch, events_per_account - written) - len(pending)
            pending += _deposit_events(
                account, 10 * max(0, written - 1), take, f"b-{account}-{written}"
            )
            result = await store.append(stream, pending, version)
            version, written, pending = result.version, written + len(pending), []

    try:
        for i in range(0, len(names), 200):
            await asyncio.gather(*(one(a) for a in names[i : i + 200]))
        return await store.head_position()
    finally:
        await store.close()


async def long_stream_deposits(
    data_dir: Path, cold_samples: int, warm_samples: int
) -> dict[str, Any]:
    """p50 of one deposit on a 100,000-event stream vs on a fresh one, cold and warm."""
    store = SqliteEventStore(data_dir / EVENTS_FILE)
    await store.open()
    try:
        fresh = "fresh-0"
        handler = _handler(store)
        await _open(handler, fresh)

        async def timed(h: CommandHandler[Any, Any, Any], account: str) -> float:
            started = time.perf_counter()
            await _deposit(h, account, 10)
            return (time.perf_counter() - started) * 1000

        accounts = {"long": LONG_STREAM_ACCOUNT, "fresh": fresh}
        warm_handlers = {}
        for label, account in accounts.items():
            # The stream was appended straight into the store, so it has no snapshot yet;
            # a server that had handled it would have one. The first load writes it.
            await _deposit(_handler(store), account, 10)
            warm_handlers[label] = _handler(store)
            await timed(warm_handlers[label], account)  # fills the cache
        # Samples alternate between the two accounts, so a machine that slows down or
        # speeds up meanwhile moves both figures alike and the ratio stays meaningful.
        samples: dict[str, list[float]] = {
            f"{label}_{kind}": [] for label in accounts for kind in ("cold", "warm")
        }
        for i in range(max(cold_samples, warm_samples)):
            for label, account in accounts.items():
                if i < cold_samples:
                    samples[f"{label}_cold"].append(await timed(_handler(store), account))
                if i < warm_samples:
                    samples[f"{label}_warm"].append(await timed(warm_handlers[label], account))
        out: dict[str, Any] = {
            f"{key}_p50_ms": round(statistics.median(values), 3) for key, values in samples.items()
        }
        out["cold_ratio"] = round(out["long_cold_p50_ms"] / out["fresh_cold_p50_ms"], 2)
        out["warm_ratio"] = round(out["long_warm_p50_ms"] / out["fresh_warm_p50_ms"], 2)
        return out
    finally:
        await store.close()


def storage_ceiling(data_dir: Path) -> tuple[int, float]:
    """Read every event row straight from the SQLite file: (events, seconds)."""
    conn = sqlite3.connect(f"file:{data_dir / EVENTS_FILE}?mode=ro", uri=True)
    try:
        started = time.perf_counter()
        cursor = conn.execute(
            "SELECT event_id, stream, version, position, type, data, metadata, recorded_at"
            " FROM events ORDER BY position"
        )
        count = 0
        while rows := cursor.fetchmany(1000):
            count += len(rows)
        return count, time.perf_counter() - started
    finally:
        conn.close()


def projector_floor(data_dir: Path, out_dir: Path, batch: int = 1000) -> tuple[int, float]:
    """The fastest conceivable projector: (events, seconds).

    It reads the rows as `storage_ceiling` does, JSON-decodes each event body (orjson) and
    writes one row per event (keyed by stream and version, so in nearly ascending key
    order, the cheapest insert), each batch in one transaction with its checkpoint, on
    a file set up as the view store's (WAL, synchronous=NORMAL). No event objects, no
    handlers, no indexes: a real projector cannot beat it, so its ratio to the ceiling
    bounds the ratio any projector can reach on this machine."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(f"file:{data_dir / EVENTS_FILE}?mode=ro", uri=True)
    views = sqlite3.connect(out_dir / "floor.sqlite3", isolation_level=None)
    try:
        views.execute("PRAGMA journal_mode=WAL")
        views.execute("PRAGMA synchronous=NORMAL")
        views.execute(
            "CREATE TABLE rows (key TEXT PRIMARY KEY, position INTEGER NOT NULL,"
            " doc TEXT NOT NULL) WITHOUT ROWID"
        )
        views.execute("CREATE TABLE checkpoint (position INTEGER NOT NULL)")
        views.execute("INSERT INTO checkpoint VALUES (0)")
        started = time.perf_counter()
        cursor = source.execute(
            "SELECT event_id, stream, version, position, type, data, metadata, recorded_at"
            " FROM events ORDER BY position"
        )
        count = 0
        while rows := cursor.fetchmany(batch):
            written = []
            for _, stream, version, position, _, data, _, _ in rows:
                # What any projector does with a body, at the least, with the fastest
                # decoder here (orjson, as Ledger's codec; the standard json is 1.5-2x slower).
                orjson.loads(data)
                written.append((f"{stream}/{version:020d}", position, data.decode()))
            views.execute("BEGIN IMMEDIATE")
            views.executemany(
                "INSERT INTO rows (key, position, doc) VALUES (?, ?, ?) ON CONFLICT (key)"
                " DO UPDATE SET position = excluded.position, doc = excluded.doc"
                " WHERE excluded.position > position",
                written,
            )
            views.execute("UPDATE checkpoint SET position = ?", (rows[-1][3],))
            views.execute("COMMIT")
            count += len(rows)
        return count, time.perf_counter() - started
    finally:
        source.close()
        views.close()
