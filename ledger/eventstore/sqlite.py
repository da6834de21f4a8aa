"""The embedded event store: one SQLite file in WAL mode.

Concurrent appends are group-committed: whatever is queued when the writer thread
becomes free goes into one transaction, and one fsync acknowledges them all. The
writer thread takes the next group itself, without waiting for the event loop, and
writes a group in as few statements as it can (each one costs it a wait for the GIL,
held by the busy loop under load): one, in the common case of appends to distinct
streams; one append's conflict never affects another's outcome.

Snapshots live in their own table, one row per stream, outside the log: the projector
never sees them. They are committed without an fsync of their own (the next append's
fsync covers them; a snapshot lost in a crash only means a replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import orjson

from ledger.commit_signals import CommitSignaller
from ledger.errors import Unavailable, WrongExpectedVersion
from ledger.eventstore.port import (
    ANY_VERSION,
    NO_STREAM,
    AppendResult,
    NewEvent,
    RecordedEvent,
    Snapshot,
    SubscriptionBatch,
)
from ledger.sqlite_support import ChangeWatcher, SqliteThreads, write_transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    stream      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    data        BLOB    NOT NULL,
    metadata    BLOB    NOT NULL,
    recorded_at TEXT    NOT NULL,
    UNIQUE (stream, version)
);
CREATE TABLE IF NOT EXISTS snapshots (
    stream      TEXT    PRIMARY KEY,
    version     INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    data        BLOB    NOT NULL
) WITHOUT ROWID;
"""

COLUMNS = "event_id, stream, version, position, type, data, metadata, recorded_at"
MAX_GROUP = 256
INLINE_ROWS = 64
"""Reads of up to this many events run on the event loop's thread (SqliteThreads.read_now);
a longer read goes on in a reader thread from where that part stopped. A stream read
after a snapshot, a request's events and a live subscription's batch are all this
small; a replay or a catch-up is not."""


def _row_to_event(row: tuple[str, str, int, int, str, bytes, bytes, str]) -> RecordedEvent:
    event_id, stream, version, position, type_, data, metadata, recorded_at = row
    return RecordedEvent(
        event_id=UUID(event_id),
        stream=stream,
        version=version,
        position=position,
        type=type_,
        data=bytes(data),
        metadata=bytes(metadata),
        recorded_at=datetime.fromisoformat(recorded_at),
    )


@dataclass
class _PendingAppend:
    stream: str
    events: Sequence[NewEvent]
    expected_version: int
    future: asyncio.Future[AppendResult] = field(repr=False)


@dataclass
class _PendingSnapshot:
    stream: str
    snapshot: Snapshot
    future: asyncio.Future[AppendResult | None] = field(repr=False)


_Pending = _PendingAppend | _PendingSnapshot
_Outcome = AppendResult | None | BaseException
_Row = tuple[str, str, int, str, bytes, bytes, str]

PROBE = """
SELECT (SELECT count(*) FROM events WHERE event_id IN (SELECT value FROM json_each(?1))),
       (SELECT json_group_object(value, (SELECT MAX(version) FROM events WHERE stream = value))
        FROM json_each(?2))
"""
"""How many of these event ids are stored, and each of these streams' current version
(null if none), in one statement: each statement is a release and a re-take of the GIL
by the writer thread, which under load waits for the event loop's thread."""

INSERT_ROWS = 140
"""Events per INSERT statement: seven parameters each, within the 999 parameters of the
oldest SQLite builds (newer ones allow 32,766)."""


def _current_version(conn: sqlite3.Connection, stream: str) -> int:
    row = conn.execute("SELECT MAX(version) FROM events WHERE stream = ?", (stream,)).fetchone()
    return NO_STREAM if row[0] is None else int(row[0])


def _already_appended(
    conn: sqlite3.Connection, stream: str, events: Sequence[NewEvent], expected: int
) -> AppendResult | None:
    """The original result if these exact event ids were appended here before."""
    rows = conn.execute(
        f"SELECT stream, version, position FROM events WHERE event_id IN "
        f"({','.join('?' * len(events))}) ORDER BY position",
        [str(e.event_id) for e in events],
    ).fetchall()
    if not rows:
        return None
    streams = {r[0] for r in rows}
    versions = [r[1] for r in rows]
    first = versions[0]
    consecutive = versions == list(range(first, first + len(events)))
    fits = expected in (ANY_VERSION, first - 1)
    if len(rows) == len(events) and streams == {stream} and consecutive and fits:
        return AppendResult(version=versions[-1], position=rows[-1][2], deduplicated=True)
    # Some ids exist elsewhere: this is not a retry of the same append.
    raise WrongExpectedVersion(stream, expected, _current_version(conn, stream))


@functools.lru_cache(maxsize=8)
def _insert_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
    return (
        "INSERT INTO events (event_id, stream, version, type, data, metadata, recorded_at)"
        f" VALUES {values}"
    )


def _rows(stream: str, events: Sequence[NewEvent], current: int, now: str) -> list[_Row]:
    """The events' rows, at the versions after `current`."""
    return [
        (str(e.event_id), stream, current + offset, e.type, e.data, e.metadata, now)
        for offset, e in enumerate(events, start=1)
    ]


def _insert(conn: sqlite3.Connection, rows: Sequence[_Row]) -> list[int]:
    """Insert the rows in this order; their positions. One statement's rows take
    consecutive positions (AUTOINCREMENT: one more than the largest ever given), so
    the last one's tells them all."""
    positions: list[int] = []
    for start in range(0, len(rows), INSERT_ROWS):
        chunk = rows[start : start + INSERT_ROWS]
        last = int(
            conn.execute(_insert_sql(len(chunk)), [v for r in chunk for v in r]).lastrowid or 0
        )
        positions.extend(range(last - len(chunk) + 1, last + 1))
    return positions


def _append_fresh(
    conn: sqlite3.Connection, appends: Sequence[_PendingAppend], now: str
) -> list[_Outcome] | None:
    """Every append of the group in a handful of statements, if none of their event ids
    is stored yet or repeated among them (the common case); None otherwise, and then
    `_append_one` takes them one at a time."""
    ids = [str(e.event_id) for a in appends for e in a.events]
    if len(set(ids)) != len(ids):
        return None
    streams = list(dict.fromkeys(a.stream for a in appends))
    stored, current = conn.execute(PROBE, (orjson.dumps(ids), orjson.dumps(streams))).fetchone()
    if stored:
        return None
    versions = {s: NO_STREAM if v is None else int(v) for s, v in orjson.loads(current).items()}
    rows: list[_Row] = []
    done: list[tuple[int, int] | WrongExpectedVersion] = []  # (version, row) of each last event
    for a in appends:
        version = versions[a.stream]
        if a.expected_version not in (ANY_VERSION, version):
            done.append(WrongExpectedVersion(a.stream, a.expected_version, version))
            continue
        rows += _rows(a.stream, a.events, version, now)
        versions[a.stream] = version + len(a.events)
        done.append((versions[a.stream], len(rows) - 1))
    positions = _insert(conn, rows)
    return [
        d if isinstance(d, WrongExpectedVersion) else AppendResult(d[0], positions[d[1]])
        for d in done
    ]


ONE_STATEMENT_ROWS = 110
"""Events a group may hold to be appended by `_append_at_once`: eight parameters each,
within the 999 parameters of the oldest SQLite builds."""
ONE_STATEMENT = sqlite3.sqlite_version_info >= (3, 35, 0)
"""`_append_at_once` needs RETURNING (SQLite 3.35); older builds take the transaction."""


@functools.lru_cache(maxsize=64)
def _at_once_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"""
WITH batch (seq, event_id, stream, offset, expected, type, data, metadata) AS (VALUES {values}),
heads (stream, head) AS (
    SELECT stream,
           (SELECT coalesce(MAX(version), {NO_STREAM}) FROM events e WHERE e.stream = b.stream)
    FROM (SELECT DISTINCT stream FROM batch) b
)
INSERT INTO events (event_id, stream, version, type, data, metadata, recorded_at)
SELECT batch.event_id, batch.stream, heads.head + batch.offset, batch.type, batch.data,
       batch.metadata, ?
FROM batch JOIN heads USING (stream)
WHERE batch.expected IN ({ANY_VERSION}, heads.head)
ORDER BY batch.seq
RETURNING stream, version, position
"""


def _append_at_once(
    conn: sqlite3.Connection, appends: Sequence[_PendingAppend], now: str
) -> list[_Outcome] | None:
    """A group of appends to distinct streams as one autocommit statement: each append's
    check against its stream's head, its rows, and the (fsync'd) commit. One statement
    is one hand-back and re-take of the GIL by the writer thread where the transaction
    takes four, and each re-take waits behind the busy event loop under load, which
    waits in turn for the writer: (a) gained about 8 % (docs/benchmarks.md). An append
    whose check fails writes nothing and is told why (`_refused`); the others land.
    None, with nothing written, where the group does not fit (a stream twice, too many
    events, an event id stored already or repeated: the statement fails whole on the
    unique id), and the transaction takes it."""
    streams = [a.stream for a in appends]
    count = sum(len(a.events) for a in appends)
    if not ONE_STATEMENT or len(set(streams)) != len(streams) or count > ONE_STATEMENT_ROWS:
        return None
    parameters: list[object] = []
    seq = 0
    for a in appends:
        for offset, e in enumerate(a.events, start=1):
            parameters += (seq, str(e.event_id), a.stream, offset, a.expected_version)
            parameters += (e.type, e.data, e.metadata)
            seq += 1
    parameters.append(now)
    try:
        returned = conn.execute(_at_once_sql(count), parameters).fetchall()
    except sqlite3.IntegrityError:
        return None
    last: dict[str, tuple[int, int]] = {}
    for stream, version, position in returned:
        if stream not in last or version > last[stream][0]:
            last[stream] = (int(version), int(position))
    return [
        AppendResult(*last[a.stream]) if a.stream in last else _refused(conn, a) for a in appends
    ]


def _refused(conn: sqlite3.Connection, item: _PendingAppend) -> _Outcome:
    """Why an append's check failed: a retry (its ids are stored: the original result)
    or a conflict."""
    try:
        previous = _already_appended(conn, item.stream, item.events, item.expected_version)
    except WrongExpectedVersion as conflict:
        return conflict
    if previous is not None:
        return previous
    return WrongExpectedVersion(
        item.stream, item.expected_version, _current_version(conn, item.stream)
    )


def _append_one(conn: sqlite3.Connection, item: _PendingAppend, now: str) -> AppendResult:
    previous = _already_appended(conn, item.stream, item.events, item.expected_version)
    if previous is not None:
        return previous
    current = _current_version(conn, item.stream)
    if item.expected_version != ANY_VERSION and item.expected_version != current:
        raise WrongExpectedVersion(item.stream, item.expected_version, current)
    positions = _insert(conn, _rows(item.stream, item.events, current, now))
    return AppendResult(version=current + len(item.events), position=positions[-1])


def _read_stream(
    conn: sqlite3.Connection, stream: str, from_version: int, limit: int | None = None
) -> list[RecordedEvent]:
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM events WHERE stream = ? AND version >= ? ORDER BY version LIMIT ?",
        (stream, from_version, -1 if limit is None else limit),
    ).fetchall()
    return [_row_to_event(r) for r in rows]


def _read_snapshot(conn: sqlite3.Connection, stream: str) -> Snapshot | None:
    row = conn.execute(
        "SELECT version, position, data FROM snapshots WHERE stream = ?", (stream,)
    ).fetchone()
    return None if row is None else Snapshot(int(row[0]), int(row[1]), bytes(row[2]))


LATEST = f"""
SELECT NULL, NULL, version, position, NULL, data, NULL, NULL FROM snapshots WHERE stream = ?1
UNION ALL
SELECT * FROM (
    SELECT {COLUMNS} FROM events
    WHERE stream = ?1
      AND version > coalesce((SELECT version FROM snapshots WHERE stream = ?1), {NO_STREAM})
    ORDER BY version LIMIT ?2
)
ORDER BY 3
"""
"""A stream's snapshot, if any (the row with no event id), then the first events after it."""


def _read_latest(
    conn: sqlite3.Connection, stream: str
) -> tuple[Snapshot | None, list[RecordedEvent]]:
    """The snapshot and the events after it in one statement, which is one read (so
    they agree) and one hand-back of the GIL by the event loop's thread, where two
    statements were two: under load each re-take waits behind the writer thread."""
    snapshot: Snapshot | None = None
    events: list[RecordedEvent] = []
    for row in conn.execute(LATEST, (stream, INLINE_ROWS)):
        if row[0] is None:
            snapshot = Snapshot(int(row[2]), int(row[3]), bytes(row[5]))
        else:
            events.append(_row_to_event(row))
    return snapshot, events


def _write_snapshot(conn: sqlite3.Connection, stream: str, snapshot: Snapshot) -> None:
    conn.execute(
        "INSERT INTO snapshots (stream, version, position, data) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (stream) DO UPDATE SET version = excluded.version,"
        " position = excluded.position, data = excluded.data"
        " WHERE excluded.version > snapshots.version",
        (stream, snapshot.version, snapshot.position, snapshot.data),
    )


def _commit_group(conn: sqlite3.Connection, group: Sequence[_Pending]) -> list[_Outcome]:
    """One statement (`_append_at_once`) or else one transaction for the group; an
    outcome per item, in order. A conflict is the outcome of its own append alone (each
    is checked, or else run in a savepoint). Snapshots ride along in the transaction; a
    group of only snapshots commits without an fsync (one lost in a crash only means a
    replay)."""
    appends = [p for p in group if isinstance(p, _PendingAppend)]
    now = datetime.now(UTC).isoformat()
    if appends and len(appends) == len(group):
        at_once = _append_at_once(conn, appends, now)
        if at_once is not None:
            return at_once
    if not appends:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        with write_transaction(conn):
            outcomes = _append_fresh(conn, appends, now) if appends else []
            if outcomes is None:
                outcomes = [_append_in_savepoint(conn, a, now) for a in appends]
            for p in group:
                if isinstance(p, _PendingSnapshot):
                    _write_snapshot(conn, p.stream, p.snapshot)
    finally:
        if not appends:
            conn.execute("PRAGMA synchronous=FULL")  # every append stays fsync'd
    results = iter(outcomes)
    return [next(results) if isinstance(p, _PendingAppend) else None for p in group]


def _append_in_savepoint(conn: sqlite3.Connection, item: _PendingAppend, now: str) -> _Outcome:
    conn.execute("SAVEPOINT one_append")
    try:
        result = _append_one(conn, item, now)
    except (WrongExpectedVersion, sqlite3.IntegrityError) as exc:
        conn.execute("ROLLBACK TO one_append")
        conn.execute("RELEASE one_append")
        return exc
    conn.execute("RELEASE one_append")
    return result


class SqliteEventStore:
    def __init__(self, path: Path, *, poll_interval: float = 0.002) -> None:
        self._path = path
        self._poll_interval = poll_interval
        self._threads: SqliteThreads | None = None
        self._signaller = CommitSignaller(path)
        # Group commit: appends (and snapshots) wait here; the writer thread takes all
        # that wait whenever it is free, and keeps on while any are left, so under load
        # it never waits for the event loop between two commits.
        self._pending: deque[_Pending] = deque()
        self._pending_lock = threading.Lock()
        self._writing = False  # the writer thread is on it (or about to be)
        self._writer: Future[None] | None = None
        self._closing = False

    @property
    def _db(self) -> SqliteThreads:
        if self._threads is None:
            raise Unavailable("the event store is not open")
        return self._threads

    async def open(self) -> None:
        threads = SqliteThreads(self._path, synchronous="FULL")
        try:
            await threads.write(lambda conn: conn.executescript(SCHEMA))
        except BaseException:
            threads.close()  # a retried open must not leak threads and connections
            raise
        self._threads = threads
        self._closing = False

    async def close(self) -> None:
        """Refuse new appends, let every queued one commit and answer, then stop."""
        self._closing = True
        if self._writer is not None:
            await asyncio.gather(asyncio.wrap_future(self._writer), return_exceptions=True)
            self._writer = None
        if self._threads is not None:
            self._threads.close()
            self._threads = None
        self._signaller.close()

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> AppendResult:
        if not events:
            raise ValueError("an append needs at least one event")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._enqueue(_PendingAppend(stream, events, expected_version, future))
        return await future

    async def write_snapshot(self, stream: str, snapshot: Snapshot) -> None:
        future: asyncio.Future[AppendResult | None] = asyncio.get_running_loop().create_future()
        self._enqueue(_PendingSnapshot(stream, snapshot, future))
        await future

    def _enqueue(self, item: _Pending) -> None:
        if self._threads is None or self._closing:
            raise Unavailable("the event store is not open")
        with self._pending_lock:
            self._pending.append(item)
            if self._writing:
                return
            self._writing = True
        loop = asyncio.get_running_loop()
        writer = self._db.submit_write(functools.partial(self._write, loop=loop))
        writer.add_done_callback(functools.partial(self._writer_stopped, loop=loop))
        self._writer = writer

    def _write(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: commit what waits, a group at a time, until none does."""
        while True:
            with self._pending_lock:
                if not self._pending:
                    self._writing = False
                    return
                take = min(len(self._pending), MAX_GROUP)
                group = [self._pending.popleft() for _ in range(take)]
            outcomes: list[_Outcome]
            try:
                with self._db.outages():
                    outcomes = _commit_group(conn, group)
            except Exception as exc:  # the whole transaction failed: fail every caller
                outcomes = [exc] * len(group)
            loop.call_soon_threadsafe(self._answer, group, outcomes)

    def _writer_stopped(self, writer: Future[None], loop: asyncio.AbstractEventLoop) -> None:
        """If the writer thread could not start (no connection), fail what waits.

        Runs on the writer thread (or on the caller's, if it had stopped already)."""
        if writer.cancelled() or (failure := writer.exception()) is None:
            return
        with self._pending_lock:
            group, self._pending = list(self._pending), deque()
            self._writing = False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(self._answer, group, [failure] * len(group))

    def _answer(self, group: Sequence[_Pending], outcomes: Sequence[_Outcome]) -> None:
        """On the loop's thread: each caller hears its own outcome."""
        for item, outcome in zip(group, outcomes, strict=True):
            if item.future.done():  # its caller gave up
                continue
            if isinstance(outcome, sqlite3.IntegrityError) and isinstance(item, _PendingAppend):
                # Another append of the group took its ids or versions first.
                current = self._db.read_now(functools.partial(_current_version, stream=item.stream))
                outcome = WrongExpectedVersion(item.stream, item.expected_version, current)
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)  # type: ignore[arg-type]
        self._signaller.send()  # subscribers wake (ledger.commit_signals)

    async def read_stream(
        self, stream: str, from_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        head = INLINE_ROWS if limit is None else min(limit, INLINE_ROWS)
        events = self._db.read_now(
            functools.partial(_read_stream, stream=stream, from_version=from_version, limit=head)
        )
        return await self._read_rest(stream, events, head, limit)

    async def _read_rest(
        self, stream: str, events: list[RecordedEvent], asked: int, limit: int | None
    ) -> list[RecordedEvent]:
        """`events` (a read of `asked` events), and, if that was not all, the rest, read
        in a reader thread: the stream only grows, so reading on from the last version
        read gives the same events as one read would have."""
        if len(events) < asked or (limit is not None and len(events) >= limit):
            return events
        rest = await self._db.read(
            functools.partial(
                _read_stream,
                stream=stream,
                from_version=events[-1].version + 1,
                limit=None if limit is None else limit - len(events),
            )
        )
        return events + rest

    @property
    def unique_event_ids(self) -> bool:
        return True  # event_id is UNIQUE (hence indexed), and _already_appended refuses

    async def read_last(self, stream: str) -> RecordedEvent | None:
        def read(conn: sqlite3.Connection) -> RecordedEvent | None:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM events WHERE stream = ? ORDER BY version DESC LIMIT 1",
                (stream,),
            ).fetchone()
            return None if row is None else _row_to_event(row)

        return self._db.read_now(read)

    async def find_event(self, stream: str, event_id: UUID) -> RecordedEvent | None:
        def read(conn: sqlite3.Connection) -> RecordedEvent | None:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM events WHERE event_id = ? AND stream = ?",
                (str(event_id), stream),
            ).fetchone()
            return None if row is None else _row_to_event(row)

        return self._db.read_now(read)

    async def read_snapshot(self, stream: str) -> Snapshot | None:
        return self._db.read_now(functools.partial(_read_snapshot, stream=stream))

    async def read_latest(self, stream: str) -> tuple[Snapshot | None, list[RecordedEvent]]:
        snapshot, events = self._db.read_now(functools.partial(_read_latest, stream=stream))
        return snapshot, await self._read_rest(stream, events, INLINE_ROWS, None)

    async def head_position(self, *, stream_prefixes: Sequence[str] = ()) -> int:
        # Newest first along the primary key, stopping at the first match: only the
        # trailing events in other streams are looked at.
        match, parameters = _in_streams(tuple(stream_prefixes))
        sql = f"SELECT position FROM events WHERE {match} ORDER BY position DESC LIMIT 1"

        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute(sql, parameters).fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.read(read)  # unbounded: may pass many other streams' events

    async def read_all(self, after_position: int, limit: int) -> list[RecordedEvent]:
        def read(conn: sqlite3.Connection) -> list[RecordedEvent]:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (after_position, limit),
            ).fetchall()
            return [_row_to_event(r) for r in rows]

        return await self._db.read(read)

    async def subscribe(
        self,
        after_position: int,
        *,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
        batch_size: int = 1000,
    ) -> AsyncIterator[SubscriptionBatch]:
        """Each batch covers up to `batch_size` positions of the log (fewer events if other
        streams' events are among them: those are skipped inside SQLite, never decoded).
        Behind the head, windows are read in a reader thread; at the head, the live tail
        is read on the loop's thread (INLINE_ROWS positions at a time)."""
        window = functools.partial(
            _read_window, prefixes=tuple(stream_prefixes), types=tuple(event_types)
        )
        watcher = ChangeWatcher(self._path, interval=self._poll_interval)
        position, behind = after_position, True
        try:
            while True:
                if behind:
                    read = await self._db.read(
                        functools.partial(window, after=position, span=batch_size)
                    )
                else:
                    span = min(batch_size, INLINE_ROWS)
                    read = self._db.read_now(functools.partial(window, after=position, span=span))
                behind = read.head - read.upto > INLINE_ROWS
                if read.upto == position:
                    await watcher.wait()
                    continue
                position = read.upto
                yield SubscriptionBatch(read.events, position, caught_up=read.upto >= read.head)
        finally:
            watcher.close()


@dataclass(frozen=True)
class _Window:
    events: tuple[RecordedEvent, ...]
    upto: int
    """Every position up to here was looked at."""
    head: int


def _in_streams(
    prefixes: tuple[str, ...], types: tuple[str, ...] = ()
) -> tuple[str, list[str | int]]:
    """A WHERE condition (and its parameters) for events of streams starting with one of
    `prefixes` and of one of `types`; true for every event if there are neither."""
    match = " OR ".join("substr(stream, 1, ?) = ?" for _ in prefixes) or "1"
    if types:
        match = f"({match}) AND type IN ({', '.join('?' * len(types))})"
    return match, [*(x for p in prefixes for x in (len(p), p)), *types]


def _read_window(
    conn: sqlite3.Connection,
    *,
    after: int,
    span: int,
    prefixes: tuple[str, ...],
    types: tuple[str, ...],
) -> _Window:
    """The wanted streams' events among positions (after, after + span], or up to the head
    if it is nearer, and the head, in one statement: one read, so `upto` and the events
    agree, and one hand-back of the GIL by the event loop's thread for a live tail read
    up to a hundred times a second, where a transaction took four."""
    match, parameters = _in_streams(prefixes, types)
    head, events = 0, []
    for row in conn.execute(_window_sql(match), [after, after + span, *parameters]):
        if row[0] is None:
            head = int(row[3])
        else:
            events.append(_row_to_event(row))
    return _Window(tuple(events), min(after + span, max(head, after)), head)


@functools.lru_cache(maxsize=32)
def _window_sql(match: str) -> str:
    """The head (the row with no event id), and the matching events in the window, in
    position order (?1: after, ?2: after + span; `match`'s parameters follow)."""
    head = "(SELECT coalesce(MAX(position), 0) FROM events)"
    return (
        f"SELECT NULL, NULL, NULL, {head}, NULL, NULL, NULL, NULL"
        f" UNION ALL SELECT {COLUMNS} FROM events"
        f" WHERE position > ?1 AND position <= min(?2, max({head}, ?1)) AND ({match})"
        " ORDER BY 4"
    )
