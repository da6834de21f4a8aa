"""What both SQLite adapters share: connection set-up and where each call runs.

sqlite3 blocks, so each adapter owns a single writer thread (SQLite admits one writer
at a time anyway) and a small pool of reader threads, each with its own connection.
Small reads (a point lookup, a page of rows) run on the event loop's own thread
instead: in WAL mode a read never waits for a writer, and it costs less than the hop
to a thread and back (two thread wake-ups and a loop wake-up; measured in
docs/benchmarks.md, it was about a fifth of a deposit's CPU time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal, NoReturn, TypeVar

from ledger import commit_signals
from ledger.errors import Unavailable

T = TypeVar("T")
log = logging.getLogger("ledger.sqlite")
Synchronous = Literal["FULL", "NORMAL"]


BUSY_TIMEOUT = 30.0
"""Seconds a thread's connection waits for a lock before the store counts as unavailable."""
LOOP_BUSY_TIMEOUT = 1.0
"""The same for the event loop's connection: a WAL reader only waits in rare cases (a
recovery after a crash), and the loop must not stall for long on one."""


def connect(
    path: Path, *, synchronous: Synchronous, busy_timeout: float = BUSY_TIMEOUT
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, waiting on locks."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
    except (sqlite3.Error, OSError) as exc:
        # The path and the cause go to the log; clients only learn that it is unavailable.
        log.warning("cannot open SQLite database", extra={"path": str(path), "error": str(exc)})
        raise Unavailable("a SQLite store cannot be opened") from exc
    return conn


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock up front) ... COMMIT, or ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


OUTAGE_MESSAGES = ("locked", "busy", "unable to open", "disk i/o", "readonly", "full")


def _is_outage(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return any(message in text for message in OUTAGE_MESSAGES)


class SqliteThreads:
    """One writer thread and a pool of reader threads, each with its own connection,
    plus one connection for small reads on the event loop's thread (`read_now`)."""

    def __init__(self, path: Path, *, synchronous: Synchronous, readers: int = 2) -> None:
        self._path = path
        self._synchronous: Synchronous = synchronous
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{path.stem}-writer")
        self._reader_pool = ThreadPoolExecutor(readers, thread_name_prefix=f"{path.stem}-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
        """This thread's connection (each thread has its own)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self._path, synchronous=self._synchronous, busy_timeout=busy_timeout)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._writer_pool, fn)

    def submit_write(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Start `fn` on the writer thread now, with no task and no trip through the
        event loop on the way there or back (the caller answers its own waiters).

        For a loop that feeds the writer many times a second: `write` costs a task, a
        loop iteration before the thread starts, and a wake-up of the loop when it ends."""
        return self._writer_pool.submit(lambda: fn(self._connection()))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(self._reader_pool, fn)

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a small read right here, on the calling thread (the event loop's).

        Only for reads bounded in size (a lookup by key, a page of rows): a long read
        would hold up every other task on the loop. Use `read` for the rest."""
        try:  # not `with self.outages()`: a generator context per read costs about 1 µs
            return fn(self._connection(LOOP_BUSY_TIMEOUT))
        except sqlite3.OperationalError as exc:
            self._raise_for(exc)

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        with self.outages():
            return await loop.run_in_executor(pool, lambda: fn(self._connection()))

    @contextlib.contextmanager
    def outages(self) -> Iterator[None]:
        """Turn a store that cannot be used now into Unavailable (retryable), and only that."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            self._raise_for(exc)

    def _raise_for(self, exc: sqlite3.OperationalError) -> NoReturn:
        """Unavailable (retryable, logged) for an outage; else `exc` itself, a bug (no such
        table, bad SQL), never disguised as a retryable outage."""
        if not _is_outage(exc):
            raise exc
        log.warning("SQLite store unavailable", extra={"path": str(self._path), "error": str(exc)})
        raise Unavailable("a SQLite store is unavailable") from exc

    def close(self) -> None:
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


QUIET = 0.05
"""Seconds without a change after which a signalled reader stops polling."""


class ChangeWatcher:
    """Tells when another connection committed, by looking at `PRAGMA data_version`:
    every `interval` seconds while commits keep coming, and once none came for QUIET
    seconds, when a commit signal (ledger.commit_signals) wakes it, or every
    `signalled_interval` seconds (for writers that send none).

    data_version lives in shared memory, so a look costs microseconds and touches no
    disk. Polling every 2 ms kept a reader near live but cost an idle one ~5 % of a
    core; the signal makes idle nearly free and sees the first commit after a quiet
    spell at once. While commits keep coming, a 2 ms poll finds one nearly every time
    and takes them in batches, so it stays: a wake-up per commit would only add
    wake-ups, each tied to the writer's own busy moment. Without signals (not Linux),
    it polls every `interval` seconds throughout. A new watcher also looks every `interval`
    (at most) for its first RELIST_SECONDS, signals or not: writers list their listeners
    that often, so a commit meanwhile may not signal it (the first read-your-writes after
    a query server started waited for the 0.1 s look).
    """

    def __init__(
        self, path: Path, *, interval: float = 0.002, signalled_interval: float = 0.1
    ) -> None:
        self._conn = connect(path, synchronous="NORMAL")
        self._signals = commit_signals.listen(path)
        self._interval = interval
        self._idle_interval = max(interval, signalled_interval)
        self._changed_at = -QUIET
        self._known_by_writers_at = time.monotonic() + commit_signals.RELIST_SECONDS
        self._seen = self._version()

    def _version(self) -> int:
        row = self._conn.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    async def wait(self, budget: float | None = None) -> bool:
        """Wait until something was committed since the last call; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget
        while True:
            now = loop.time()
            # Quiet for QUIET seconds: wait for a signal (if there can be one), not the poll.
            signals = self._signals if now - self._changed_at >= QUIET else None
            if signals is not None:
                signals.clear()  # a commit after the look below signals anew
            current = self._version()
            if current != self._seen:
                self._seen, self._changed_at = current, now
                return True
            pause = self._interval if signals is None else self._idle_interval
            unlisted = self._known_by_writers_at - time.monotonic()
            if signals is not None and unlisted > 0:  # not every writer signals it yet
                pause = min(pause, self._interval, unlisted)
            if deadline is not None:
                pause = min(pause, deadline - now)
                if pause <= 0:
                    return False
            if signals is None:
                await asyncio.sleep(pause)
            else:
                await signals.wait(pause)

    def close(self) -> None:
        if self._signals is not None:
            self._signals.close()
        self._conn.close()
