"""The SQLite event store against the port contract, plus what only a file can show."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger import commit_signals
from ledger.errors import Unavailable, WrongExpectedVersion
from ledger.eventstore.port import (
    ANY_VERSION,
    NO_STREAM,
    AppendResult,
    EventStore,
    NewEvent,
    Snapshot,
)
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.sqlite_support import ChangeWatcher
from tests.contract.event_store_contract import (
    TIMEOUT,
    EventStoreContract,
    collect,
    event,
    events,
    subscription,
    unique,
)

ROOT = Path(__file__).resolve().parents[2]


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite3"


class TestSqliteEventStore(EventStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[EventStore]:
        store = SqliteEventStore(db_path(tmp_path))
        await store.open()
        yield store
        await store.close()

    @pytest.fixture
    async def other_store(self, tmp_path: Path) -> AsyncIterator[EventStore | None]:
        store = SqliteEventStore(db_path(tmp_path))
        await store.open()
        yield store
        await store.close()

    # Stricter than the port (and than EventStoreDB, which dedupes ids per stream and
    # only where the retried append would land): ids are unique in the whole file.

    async def test_the_same_ids_at_another_version_are_refused(self, store: EventStore) -> None:
        stream = unique()
        new = events(1)
        await store.append(stream, new, NO_STREAM)
        with pytest.raises(WrongExpectedVersion):
            await store.append(stream, new, 0)
        assert len(await store.read_stream(stream)) == 1

    async def test_the_same_ids_in_another_stream_are_refused(self, store: EventStore) -> None:
        stream, other = unique(), unique()
        new = events(2)
        await store.append(stream, new, NO_STREAM)
        with pytest.raises(WrongExpectedVersion):
            await store.append(other, new, NO_STREAM)
        assert await store.read_stream(other) == []


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    store = SqliteEventStore(db_path(tmp_path))
    await store.open()
    yield store
    await store.close()


async def test_an_empty_log_has_head_position_zero(sqlite_store: SqliteEventStore) -> None:
    assert await sqlite_store.head_position() == 0
    result = await sqlite_store.append(unique(), events(1), NO_STREAM)
    assert result.position >= 1
    assert await sqlite_store.head_position() == result.position


async def test_an_empty_append_is_refused(sqlite_store: SqliteEventStore) -> None:
    with pytest.raises(ValueError, match="at least one event"):
        await sqlite_store.append(unique(), [], NO_STREAM)
    assert await sqlite_store.head_position() == 0


async def test_arbitrary_bytes_round_trip(sqlite_store: SqliteEventStore) -> None:
    stream = unique()
    data, metadata = bytes(range(256)), b"\x00\xff\xfe"
    await sqlite_store.append(stream, [NewEvent(uuid.uuid4(), "V1.Raw", data, metadata)], -1)
    (got,) = await sqlite_store.read_stream(stream)
    assert (got.data, got.metadata) == (data, metadata)


async def test_events_survive_a_reopen(tmp_path: Path) -> None:
    stream = unique()
    new = events(3)
    store = SqliteEventStore(db_path(tmp_path))
    await store.open()
    try:
        result = await store.append(stream, new, NO_STREAM)
    finally:
        await store.close()
    reopened = SqliteEventStore(db_path(tmp_path))
    await reopened.open()
    try:
        recorded = await reopened.read_stream(stream)
        assert [r.event_id for r in recorded] == [e.event_id for e in new]
        assert await reopened.head_position() == result.position
        assert await reopened.append(stream, new, NO_STREAM) == result
        with pytest.raises(WrongExpectedVersion):
            await reopened.append(stream, events(1), 1)
    finally:
        await reopened.close()


async def test_a_closed_store_refuses_to_append(tmp_path: Path) -> None:
    store = SqliteEventStore(db_path(tmp_path))
    with pytest.raises(Unavailable, match="not open"):
        await store.append(unique(), events(1), NO_STREAM)


async def test_close_resolves_every_append_in_flight(tmp_path: Path) -> None:
    store = SqliteEventStore(db_path(tmp_path))
    await store.open()
    streams = [unique() for _ in range(50)]
    appends = [asyncio.create_task(store.append(s, events(1), NO_STREAM)) for s in streams]
    await asyncio.sleep(0)  # let them queue
    await store.close()
    _, pending = await asyncio.wait(appends, timeout=5)  # bounds a hang; not a timing check
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} appends never returned"
    reopened = SqliteEventStore(db_path(tmp_path))
    await reopened.open()
    try:
        for s, task in zip(streams, appends, strict=True):
            if task.exception() is None:  # acknowledged: it must be in the log
                assert len(await reopened.read_stream(s)) == 1
    finally:
        await reopened.close()


async def test_more_concurrent_appends_than_one_group_all_land(
    sqlite_store: SqliteEventStore,
) -> None:
    streams = [unique() for _ in range(600)]
    results = await asyncio.gather(*(sqlite_store.append(s, events(1), NO_STREAM) for s in streams))
    assert all(r.version == 0 for r in results)
    assert len({r.position for r in results}) == 600
    assert await sqlite_store.head_position() == max(r.position for r in results)
    for s, r in zip(streams[::97], results[::97], strict=True):
        (recorded,) = await sqlite_store.read_stream(s)
        assert recorded.position == r.position


APPEND_FROM_ANOTHER_PROCESS = """
import asyncio, sys, uuid
from pathlib import Path
from ledger.eventstore.port import NO_STREAM, NewEvent
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.sqlite_support import ChangeWatcher

async def main() -> None:
    store = SqliteEventStore(Path(sys.argv[1]))
    await store.open()
    try:
        new = NewEvent(uuid.UUID(sys.argv[3]), "V1.Remote", b'{"from":"child"}', b"{}")
        result = await store.append(sys.argv[2], [new], NO_STREAM)
        print(result.position)
    finally:
        await store.close()

asyncio.run(main())
"""


SIGNALS_ONLY = pytest.param(
    3600.0,
    id="woken-by-commit-signals-alone",
    marks=pytest.mark.skipif(not commit_signals.supported(), reason="Linux only"),
)


@pytest.mark.parametrize("poll_interval", [0.002, SIGNALS_ONLY])
async def test_a_subscription_sees_another_process_append_live(
    tmp_path: Path, poll_interval: float
) -> None:
    """With an hour between polls, only the writer's commit signal can wake it in time."""
    sqlite_store = SqliteEventStore(db_path(tmp_path), poll_interval=poll_interval)
    await sqlite_store.open()
    try:
        await _sees_another_process_append_live(sqlite_store, tmp_path)
    finally:
        await sqlite_store.close()


async def _sees_another_process_append_live(sqlite_store: SqliteEventStore, tmp_path: Path) -> None:
    prefix = unique()
    first = await sqlite_store.append(f"{prefix}-local", [event()], NO_STREAM)
    remote_id = uuid.uuid4()
    async with subscription(sqlite_store, first.position - 1, [prefix]) as batches:
        (caught_up,) = await collect(batches, 1, prefix)
        assert caught_up.position == first.position
        waiting = asyncio.create_task(collect(batches, 1, prefix))
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            APPEND_FROM_ANOTHER_PROCESS,
            str(db_path(tmp_path)),
            f"{prefix}-remote",
            str(remote_id),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0, err.decode()
        (got,) = await waiting
    assert got.event_id == remote_id
    assert got.stream == f"{prefix}-remote"
    assert (got.type, got.data) == ("V1.Remote", b'{"from":"child"}')
    assert got.position == int(out.decode().strip())
    assert got.position > first.position


@pytest.mark.skipif(not commit_signals.supported(), reason="Linux only")
async def test_a_commit_forgets_listeners_that_are_gone_and_no_others(
    sqlite_store: SqliteEventStore, tmp_path: Path
) -> None:
    listening = commit_signals.listen(db_path(tmp_path))
    assert listening is not None
    try:
        directory = commit_signals.listeners_dir(db_path(tmp_path))
        (alive,) = directory.iterdir()
        namespace = alive.name.rsplit("-", 1)[0]
        dead = directory / f"{namespace}-{'0' * 16}"  # registered, then killed: no socket
        elsewhere = directory / "net:[1]-0123456789abcdef"  # another network namespace
        dead.touch()
        elsewhere.touch()
        listening.clear()
        await sqlite_store.append(unique(), events(1), NO_STREAM)
        await asyncio.wait_for(listening.wait(3600), TIMEOUT)  # signalled, not timed out
        assert sorted(directory.iterdir()) == sorted([alive, elsewhere])
    finally:
        listening.close()
    assert not alive.exists()


async def test_a_retried_append_says_it_wrote_nothing(sqlite_store: SqliteEventStore) -> None:
    stream = unique()
    new = events(2)
    first = await sqlite_store.append(stream, new, NO_STREAM)
    again = await sqlite_store.append(stream, new, NO_STREAM)
    assert (first.deduplicated, again.deduplicated) == (False, True)
    assert (again.version, again.position) == (first.version, first.position)
    assert sqlite_store.unique_event_ids


async def test_concurrent_retries_of_one_append_store_it_once(
    sqlite_store: SqliteEventStore,
) -> None:
    stream, new = unique(), events(2)
    results = await asyncio.gather(*(sqlite_store.append(stream, new, NO_STREAM) for _ in range(5)))
    assert [r.deduplicated for r in results] == [False, True, True, True, True]
    assert {(r.version, r.position) for r in results} == {(results[0].version, results[0].position)}
    assert [r.event_id for r in await sqlite_store.read_stream(stream)] == [e.event_id for e in new]


async def test_concurrent_appends_at_any_version_stack_up_in_order(
    sqlite_store: SqliteEventStore,
) -> None:
    stream = unique()
    batches = [events(i % 3 + 1) for i in range(12)]
    results = await asyncio.gather(*(sqlite_store.append(stream, b, ANY_VERSION) for b in batches))
    recorded = await sqlite_store.read_stream(stream)
    assert [r.event_id for r in recorded] == [e.event_id for b in batches for e in b]
    ends = [sum(len(b) for b in batches[: i + 1]) - 1 for i in range(len(batches))]
    assert [r.version for r in results] == ends
    assert [r.position for r in results] == [recorded[end].position for end in ends]


async def test_a_group_keeps_each_appends_events_together_and_in_order(
    sqlite_store: SqliteEventStore,
) -> None:
    """Appends of one to five events to thirty streams, concurrently (one group, one
    statement): each append's events take consecutive positions in version order."""
    streams = [unique() for _ in range(30)]
    results = await asyncio.gather(
        *(sqlite_store.append(s, events(1 + i % 5), NO_STREAM) for i, s in enumerate(streams))
    )
    for i, (s, result) in enumerate(zip(streams, results, strict=True)):
        recorded = await sqlite_store.read_stream(s)
        assert [r.version for r in recorded] == list(range(1 + i % 5))
        first = recorded[0].position
        assert [r.position for r in recorded] == list(range(first, first + len(recorded)))
        assert (result.version, result.position) == (recorded[-1].version, recorded[-1].position)


async def test_a_stored_id_in_a_group_refuses_only_its_own_append(
    sqlite_store: SqliteEventStore,
) -> None:
    """Another stream's ids, appended at any version among fresh appends: the group's
    one-statement insert fails whole on the unique id, and the group is retried in a
    transaction, where only that append is refused."""
    taken = events(1)
    await sqlite_store.append(unique(), taken, NO_STREAM)
    thief, others = unique(), [unique() for _ in range(8)]
    outcomes = await asyncio.gather(
        sqlite_store.append(thief, taken, ANY_VERSION),
        *(sqlite_store.append(s, events(2), NO_STREAM) for s in others),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], WrongExpectedVersion), outcomes[0]
    assert await sqlite_store.read_stream(thief) == []
    for s, outcome in zip(others, outcomes[1:], strict=True):
        assert isinstance(outcome, AppendResult), outcome
        assert [r.position for r in await sqlite_store.read_stream(s)][-1] == outcome.position


async def test_snapshots_commit_among_appends(sqlite_store: SqliteEventStore) -> None:
    streams = [unique() for _ in range(6)]
    firsts = [await sqlite_store.append(s, events(1), NO_STREAM) for s in streams]
    await asyncio.gather(
        *(sqlite_store.append(s, events(1), 0) for s in streams),
        *(
            sqlite_store.write_snapshot(s, Snapshot(0, f.position, s.encode()))
            for s, f in zip(streams, firsts, strict=True)
        ),
    )
    for s, f in zip(streams, firsts, strict=True):
        assert await sqlite_store.read_snapshot(s) == Snapshot(0, f.position, s.encode())
        assert len(await sqlite_store.read_stream(s)) == 2


async def test_an_append_the_writer_cannot_take_fails_instead_of_hanging(
    sqlite_store: SqliteEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = sqlite_store._db

    def no_connection(busy_timeout: float = 0.0) -> None:
        raise Unavailable("a SQLite store cannot be opened")

    monkeypatch.setattr(threads, "_connection", no_connection)
    appends = [sqlite_store.append(unique(), events(1), NO_STREAM) for _ in range(3)]
    outcomes = await asyncio.wait_for(asyncio.gather(*appends, return_exceptions=True), TIMEOUT)
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
    monkeypatch.undo()
    assert (await sqlite_store.append(unique(), events(1), NO_STREAM)).version == 0


async def test_a_snapshot_survives_a_reopen(tmp_path: Path) -> None:
    stream = unique()
    store = SqliteEventStore(db_path(tmp_path))
    await store.open()
    try:
        result = await store.append(stream, events(1), NO_STREAM)
        await store.write_snapshot(stream, Snapshot(0, result.position, b"kept"))
    finally:
        await store.close()
    reopened = SqliteEventStore(db_path(tmp_path))
    await reopened.open()
    try:
        assert await reopened.read_snapshot(stream) == Snapshot(0, result.position, b"kept")
    finally:
        await reopened.close()


@pytest.mark.skipif(not commit_signals.supported(), reason="Linux only")
async def test_an_idle_watcher_stops_polling_and_still_sees_a_commit(
    sqlite_store: SqliteEventStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = ChangeWatcher(db_path(tmp_path), interval=0.002)
    looks = 0
    look = watcher._version

    def counted() -> int:
        nonlocal looks
        looks += 1
        return look()

    monkeypatch.setattr(watcher, "_version", counted)
    try:
        await sqlite_store.append(unique(), events(1), NO_STREAM)
        assert await watcher.wait(budget=TIMEOUT)  # seen: it polls while commits come
        await asyncio.sleep(commit_signals.RELIST_SECONDS)  # writers have listed it by now
        looks = 0
        assert not await watcher.wait(budget=2.0)
        assert looks < 100  # polling every 2 ms throughout would look about 1,000 times
        waiting = asyncio.create_task(watcher.wait(budget=3600))
        await asyncio.sleep(0.2)
        await sqlite_store.append(unique(), events(1), NO_STREAM)
        assert await asyncio.wait_for(waiting, TIMEOUT)
    finally:
        watcher.close()


@pytest.mark.skipif(not commit_signals.supported(), reason="Linux only")
async def test_a_new_watcher_sees_a_commit_before_writers_have_listed_it(
    sqlite_store: SqliteEventStore, tmp_path: Path
) -> None:
    """A writer lists its listeners every RELIST_SECONDS, so its next commit signals only
    those it listed; a watcher made since must poll meanwhile, not wait for a signal (here
    the fallback look is an hour away)."""
    await sqlite_store.append(unique(), events(1), NO_STREAM)  # the writer lists listeners
    watcher = ChangeWatcher(db_path(tmp_path), interval=0.002, signalled_interval=3600)
    try:
        waiting = asyncio.create_task(watcher.wait(budget=3600))
        await asyncio.sleep(0.02)  # it has looked once and waits
        await sqlite_store.append(unique(), events(1), NO_STREAM)  # signals only the listed
        # Well before the writer lists listeners again (and it would only on a later commit).
        assert await asyncio.wait_for(waiting, commit_signals.RELIST_SECONDS * 0.8)
    finally:
        watcher.close()
