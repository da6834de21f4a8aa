"""The event store port's contract: every adapter subclasses `EventStoreContract`.

    class TestSqliteEventStore(EventStoreContract):
        @pytest.fixture
        async def store(self, tmp_path: Path) -> AsyncIterator[EventStore]:
            ...  # yield an OPENED store

        @pytest.fixture
        async def other_store(self, tmp_path: Path) -> AsyncIterator[EventStore | None]:
            ...  # optional: a second instance on the same data (default: None)

Every test writes to streams named with a fresh uuid4 and compares positions only
with each other, so an adapter backed by a shared, long-lived server passes too.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ledger.errors import WrongExpectedVersion
from ledger.eventstore.port import (
    ANY_VERSION,
    NO_STREAM,
    AppendResult,
    EventStore,
    NewEvent,
    RecordedEvent,
    Snapshot,
    SubscriptionBatch,
)

TIMEOUT = 15.0
"""Generous bound for a subscription to deliver: a hang fails the test, slowness does not."""


def unique(prefix: str = "contract") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def event(kind: str = "Tested", **body: object) -> NewEvent:
    data = json.dumps({"kind": kind, **body}, separators=(",", ":")).encode()
    return NewEvent(event_id=uuid.uuid4(), type=f"V1.{kind}", data=data, metadata=b'{"m":1}')


def events(n: int) -> list[NewEvent]:
    return [event(n=i) for i in range(n)]


@asynccontextmanager
async def subscription(
    store: EventStore,
    after_position: int,
    prefixes: Sequence[str] = (),
    types: Sequence[str] = (),
) -> AsyncIterator[AsyncIterator[SubscriptionBatch]]:
    batches = store.subscribe(after_position, stream_prefixes=prefixes, event_types=types)
    try:
        yield batches
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()


async def collect(
    batches: AsyncIterator[SubscriptionBatch], count: int, streams_prefix: str
) -> list[RecordedEvent]:
    """The next `count` events of streams starting with `streams_prefix`, checking each batch."""

    async def run() -> list[RecordedEvent]:
        seen: list[RecordedEvent] = []
        last_batch_position = -1
        async for batch in batches:
            assert batch.position >= last_batch_position
            last_batch_position = batch.position
            if batch.events:
                positions = [e.position for e in batch.events]
                assert positions == sorted(set(positions))
                assert batch.position >= positions[-1]
            seen.extend(e for e in batch.events if e.stream.startswith(streams_prefix))
            if len(seen) >= count:
                return seen
        raise AssertionError("a subscription ended by itself")

    return await asyncio.wait_for(run(), TIMEOUT)


async def until_batch_at(
    batches: AsyncIterator[SubscriptionBatch], position: int | None
) -> list[SubscriptionBatch]:
    """The batches up to the one that reaches `position` (None: the next one with events)."""

    async def run() -> list[SubscriptionBatch]:
        seen: list[SubscriptionBatch] = []
        async for batch in batches:
            if position is None and not batch.events:
                continue
            seen.append(batch)
            if position is None or batch.position >= position:
                return seen
        raise AssertionError("a subscription ended by itself")

    return await asyncio.wait_for(run(), TIMEOUT)


async def until_position(
    batches: AsyncIterator[SubscriptionBatch], position: int
) -> list[RecordedEvent]:
    """Every event delivered up to the batch that reaches `position`."""
    return [e for batch in await until_batch_at(batches, position) for e in batch.events]


class EventStoreContract:
    """Semantics of ledger.eventstore.port.EventStore, after EventStoreDB."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> EventStore:
        raise NotImplementedError("an adapter's test class yields an opened store")

    @pytest.fixture
    def other_store(self, tmp_path: Path) -> EventStore | None:
        """A second instance on the same data (another process's view); None if not possible."""
        return None

    @staticmethod
    def need(other_store: EventStore | None) -> EventStore:
        if other_store is None:
            pytest.skip("this adapter offers no second instance on the same data")
        return other_store

    # Appending and reading

    async def test_append_to_a_new_stream_numbers_versions_from_zero(
        self, store: EventStore
    ) -> None:
        stream = unique()
        new = events(3)
        result = await store.append(stream, new, NO_STREAM)
        assert result.version == 2
        recorded = await store.read_stream(stream)
        assert [r.version for r in recorded] == [0, 1, 2]
        assert [r.event_id for r in recorded] == [e.event_id for e in new]
        assert {r.stream for r in recorded} == {stream}
        assert result.position == recorded[-1].position

    async def test_a_single_event_gets_version_zero(self, store: EventStore) -> None:
        stream = unique()
        result = await store.append(stream, [event()], NO_STREAM)
        assert result.version == 0
        (recorded,) = await store.read_stream(stream)
        assert (recorded.version, recorded.position) == (0, result.position)

    async def test_appends_continue_from_the_expected_version(self, store: EventStore) -> None:
        stream = unique()
        first = await store.append(stream, events(2), NO_STREAM)
        second = await store.append(stream, events(3), first.version)
        assert second.version == 4
        assert second.position > first.position
        recorded = await store.read_stream(stream)
        assert [r.version for r in recorded] == [0, 1, 2, 3, 4]

    async def test_positions_strictly_increase_across_streams(self, store: EventStore) -> None:
        a, b = unique(), unique()
        appends = [(a, events(2), NO_STREAM), (b, events(1), NO_STREAM), (a, events(1), 1)]
        appends.append((b, events(2), 0))
        results = [await store.append(s, new, expected) for s, new, expected in appends]
        positions = [r.position for r in results]
        assert positions == sorted(set(positions))
        everything = sorted(
            await store.read_stream(a) + await store.read_stream(b), key=lambda r: r.position
        )
        assert len({r.position for r in everything}) == 6
        # in position order, the log holds the events in the order they were appended
        assert [r.event_id for r in everything] == [
            e.event_id for _, new, _ in appends for e in new
        ]

    async def test_event_type_data_and_metadata_round_trip(self, store: EventStore) -> None:
        stream = unique()
        data = json.dumps({"name": "Zoë ✓ 李", "n": 2**63 - 1}, ensure_ascii=False).encode()
        metadata = json.dumps({"request_id": "r-1", "correlation_id": "c"}).encode()
        sent = NewEvent(uuid.uuid4(), "V1.SomethingHappened", data, metadata)
        await store.append(stream, [sent], NO_STREAM)
        (got,) = await store.read_stream(stream)
        assert (got.event_id, got.type, got.data, got.metadata) == (
            sent.event_id,
            sent.type,
            data,
            metadata,
        )
        assert isinstance(got.data, bytes)
        assert isinstance(got.metadata, bytes)

    async def test_recorded_at_is_timezone_aware(self, store: EventStore) -> None:
        stream = unique()
        await store.append(stream, events(1), NO_STREAM)
        (got,) = await store.read_stream(stream)
        assert got.recorded_at.tzinfo is not None
        assert got.recorded_at.utcoffset() is not None

    async def test_read_stream_from_a_version(self, store: EventStore) -> None:
        stream = unique()
        new = events(5)
        await store.append(stream, new, NO_STREAM)
        tail = await store.read_stream(stream, 2)
        assert [r.version for r in tail] == [2, 3, 4]
        assert [r.event_id for r in tail] == [e.event_id for e in new[2:]]
        assert await store.read_stream(stream, 5) == []
        assert len(await store.read_stream(stream, 0)) == 5

    async def test_a_missing_stream_reads_as_empty(self, store: EventStore) -> None:
        assert await store.read_stream(unique()) == []
        assert await store.read_stream(unique(), 3) == []

    async def test_head_position_moves_to_the_last_append(self, store: EventStore) -> None:
        before = await store.head_position()
        assert before >= 0
        result = await store.append(unique(), events(2), NO_STREAM)
        after = await store.head_position()
        assert after >= result.position > before

    async def test_head_position_of_some_streams_ignores_the_others(
        self, store: EventStore
    ) -> None:
        category = f"c{uuid.uuid4().hex[:12]}"
        followed = await store.append(f"{category}-1", events(2), NO_STREAM)
        other = await store.append(unique(), events(1), NO_STREAM)
        assert await store.head_position(stream_prefixes=(f"{category}-",)) == followed.position
        assert await store.head_position(stream_prefixes=("nothing-here-",)) == 0
        assert await store.head_position() >= other.position > followed.position
        both = (f"{category}-", "nothing-here-")
        assert await store.head_position(stream_prefixes=both) == followed.position

    async def test_read_stream_stops_at_the_limit(self, store: EventStore) -> None:
        stream = unique()
        await store.append(stream, events(5), NO_STREAM)
        assert [r.version for r in await store.read_stream(stream, 1, 2)] == [1, 2]
        assert [r.version for r in await store.read_stream(stream, 3, 10)] == [3, 4]
        assert [r.version for r in await store.read_stream(stream, 0, None)] == [0, 1, 2, 3, 4]

    async def test_long_reads_return_every_event_in_order(self, store: EventStore) -> None:
        """Long enough to cross any adapter's page or inline-read bound (SQLite: 64)."""
        stream = unique()
        new = events(300)
        for start in range(0, 300, 100):
            await store.append(stream, new[start : start + 100], start - 1)
        assert [r.event_id for r in await store.read_stream(stream)] == [e.event_id for e in new]
        assert [r.version for r in await store.read_stream(stream, 10, 150)] == list(range(10, 160))
        assert [r.version for r in await store.read_stream(stream, 250, 64)] == list(
            range(250, 300)
        )
        await store.write_snapshot(stream, Snapshot(19, 0, b"s"))
        snapshot, after = await store.read_latest(stream)
        assert snapshot is not None
        assert snapshot.version == 19
        assert [r.version for r in after] == list(range(20, 300))

    async def test_read_last_is_the_streams_latest_event(self, store: EventStore) -> None:
        stream = unique()
        assert await store.read_last(stream) is None
        await store.append(stream, events(3), NO_STREAM)
        await store.append(unique(), events(1), NO_STREAM)  # a later event elsewhere
        last = await store.read_last(stream)
        assert last is not None
        assert last == (await store.read_stream(stream))[-1]
        assert last.version == 2

    async def test_find_event_finds_an_event_of_the_stream_by_its_id(
        self, store: EventStore
    ) -> None:
        stream, other = unique(), unique()
        new = events(3)
        await store.append(stream, new, NO_STREAM)
        await store.append(other, events(1), NO_STREAM)
        found = await store.find_event(stream, new[1].event_id)
        assert found == (await store.read_stream(stream))[1]
        assert await store.find_event(stream, uuid.uuid4()) is None
        assert await store.find_event(other, new[0].event_id) is None  # not in that stream
        assert await store.find_event(unique(), new[0].event_id) is None

    # Snapshots: beside the log, never in it

    async def test_a_stream_has_no_snapshot_until_one_is_written(self, store: EventStore) -> None:
        stream = unique()
        await store.append(stream, events(1), NO_STREAM)
        assert await store.read_snapshot(stream) is None
        assert await store.read_snapshot(unique()) is None

    async def test_the_latest_snapshot_is_read_back_and_an_older_one_never_replaces_it(
        self, store: EventStore
    ) -> None:
        stream, other = unique(), unique()
        first = await store.append(stream, events(1), NO_STREAM)
        last = await store.append(stream, events(2), first.version)
        data = bytes(range(256))
        await store.write_snapshot(stream, Snapshot(0, first.position, b"at zero"))
        await store.write_snapshot(stream, Snapshot(2, last.position, data))
        assert await store.read_snapshot(stream) == Snapshot(2, last.position, data)
        await store.write_snapshot(stream, Snapshot(0, first.position, b"late and stale"))
        assert await store.read_snapshot(stream) == Snapshot(2, last.position, data)
        assert await store.read_snapshot(other) is None  # per stream
        assert len(await store.read_stream(stream)) == 3

    async def test_a_snapshot_is_not_an_event(self, store: EventStore) -> None:
        prefix = unique()
        before = await store.head_position()
        first = await store.append(f"{prefix}-1", events(1), NO_STREAM)
        await store.write_snapshot(f"{prefix}-1", Snapshot(0, first.position, b"{}"))
        last = await store.append(f"{prefix}-2", events(1), NO_STREAM)
        await store.write_snapshot(f"{prefix}-2", Snapshot(0, last.position, b"{}"))
        assert await store.head_position() == last.position
        for prefixes in ([prefix], []):
            async with subscription(store, before, prefixes) as batches:
                got = await until_position(batches, last.position)
            assert [e.position for e in got if prefix in e.stream] == [
                first.position,
                last.position,
            ]
            assert all(e.stream.startswith(prefix) for e in got if prefix in e.stream)

    async def test_read_latest_is_the_snapshot_and_the_events_after_it(
        self, store: EventStore
    ) -> None:
        stream = unique()
        first = await store.append(stream, events(2), NO_STREAM)
        assert await store.read_latest(stream) == (None, await store.read_stream(stream))
        await store.write_snapshot(stream, Snapshot(0, first.position, b"s"))
        snapshot, after = await store.read_latest(stream)
        assert snapshot == await store.read_snapshot(stream)
        assert after == await store.read_stream(stream, 1)
        await store.write_snapshot(stream, Snapshot(first.version, first.position, b"t"))
        assert (await store.read_latest(stream))[1] == []
        assert await store.read_latest(unique()) == (None, [])

    async def test_another_instance_reads_the_snapshot(
        self, store: EventStore, other_store: EventStore | None
    ) -> None:
        other = self.need(other_store)
        stream = unique()
        result = await store.append(stream, events(1), NO_STREAM)
        await store.write_snapshot(stream, Snapshot(0, result.position, b"shared"))
        assert await other.read_snapshot(stream) == Snapshot(0, result.position, b"shared")

    # Optimistic concurrency

    async def test_no_stream_on_an_existing_stream_is_a_wrong_expected_version(
        self, store: EventStore
    ) -> None:
        stream = unique()
        await store.append(stream, events(1), NO_STREAM)
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append(stream, events(1), NO_STREAM)
        assert info.value.stream == stream
        assert info.value.expected == NO_STREAM
        assert len(await store.read_stream(stream)) == 1

    async def test_a_stale_expected_version_is_refused(self, store: EventStore) -> None:
        stream = unique()
        await store.append(stream, events(1), NO_STREAM)
        await store.append(stream, events(1), 0)
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append(stream, events(2), 0)
        assert info.value.stream == stream
        assert info.value.expected == 0
        assert [r.version for r in await store.read_stream(stream)] == [0, 1]

    async def test_an_expected_version_ahead_of_the_stream_is_refused(
        self, store: EventStore
    ) -> None:
        stream = unique()
        with pytest.raises(WrongExpectedVersion):
            await store.append(stream, events(1), 0)
        assert await store.read_stream(stream) == []
        await store.append(stream, events(1), NO_STREAM)
        with pytest.raises(WrongExpectedVersion):
            await store.append(stream, events(1), 5)
        assert len(await store.read_stream(stream)) == 1

    async def test_any_version_appends_wherever_the_stream_is(self, store: EventStore) -> None:
        stream = unique()
        first = await store.append(stream, events(1), ANY_VERSION)
        assert first.version == 0
        second = await store.append(stream, events(2), ANY_VERSION)
        assert second.version == 2
        assert second.position > first.position
        assert [r.version for r in await store.read_stream(stream)] == [0, 1, 2]

    async def test_a_refused_append_writes_nothing_anywhere(self, store: EventStore) -> None:
        stream = unique()
        await store.append(stream, events(1), NO_STREAM)
        head = await store.head_position()
        refused = events(3)
        with pytest.raises(WrongExpectedVersion):
            await store.append(stream, refused, 3)
        assert await store.head_position() == head
        # the refused ids were not burned: they can be appended properly afterwards
        result = await store.append(stream, refused, 0)
        assert result.version == 3

    async def test_concurrent_appends_at_the_same_version_exactly_one_wins(
        self, store: EventStore
    ) -> None:
        stream = unique()
        await store.append(stream, events(1), NO_STREAM)
        candidates = [events(2) for _ in range(10)]
        outcomes = await asyncio.gather(
            *(store.append(stream, c, 0) for c in candidates), return_exceptions=True
        )
        winners = [i for i, o in enumerate(outcomes) if isinstance(o, AppendResult)]
        assert len(winners) == 1
        for o in outcomes:
            assert isinstance(o, AppendResult | WrongExpectedVersion), o
        recorded = await store.read_stream(stream)
        assert [r.event_id for r in recorded[1:]] == [e.event_id for e in candidates[winners[0]]]

    async def test_concurrent_creations_of_a_stream_exactly_one_wins(
        self, store: EventStore
    ) -> None:
        stream = unique()
        outcomes = await asyncio.gather(
            *(store.append(stream, events(1), NO_STREAM) for _ in range(10)),
            return_exceptions=True,
        )
        assert sum(isinstance(o, AppendResult) for o in outcomes) == 1
        assert sum(isinstance(o, WrongExpectedVersion) for o in outcomes) == 9
        assert len(await store.read_stream(stream)) == 1

    async def test_a_conflict_does_not_affect_concurrent_appends_elsewhere(
        self, store: EventStore
    ) -> None:
        streams = [unique() for _ in range(20)]
        for s in streams:
            await store.append(s, events(1), NO_STREAM)
        # even streams at the right version, odd ones at a wrong one, all at once
        outcomes = await asyncio.gather(
            *(store.append(s, events(1), 0 if i % 2 == 0 else 3) for i, s in enumerate(streams)),
            return_exceptions=True,
        )
        for i, (s, o) in enumerate(zip(streams, outcomes, strict=True)):
            recorded = await store.read_stream(s)
            if i % 2 == 0:
                assert isinstance(o, AppendResult), o
                assert o.version == 1
                assert recorded[-1].position == o.position
            else:
                assert isinstance(o, WrongExpectedVersion), o
                assert len(recorded) == 1

    # Idempotent retries

    async def test_re_appending_the_same_ids_returns_the_original_result(
        self, store: EventStore
    ) -> None:
        stream = unique()
        new = events(2)
        original = await store.append(stream, new, NO_STREAM)
        head = await store.head_position()
        again = await store.append(stream, new, NO_STREAM)
        assert again == original
        assert await store.head_position() == head
        assert len(await store.read_stream(stream)) == 2

    async def test_a_retry_is_recognised_after_the_stream_moved_on(self, store: EventStore) -> None:
        stream = unique()
        await store.append(stream, events(1), NO_STREAM)
        new = events(2)
        original = await store.append(stream, new, 0)
        await store.append(stream, events(1), original.version)
        again = await store.append(stream, new, 0)
        assert again == original
        assert len(await store.read_stream(stream)) == 4

    async def test_an_append_mixing_stored_and_new_ids_is_refused(self, store: EventStore) -> None:
        stream = unique()
        new = events(2)
        await store.append(stream, new, NO_STREAM)
        with pytest.raises(WrongExpectedVersion):
            await store.append(stream, [*new, event()], NO_STREAM)
        assert len(await store.read_stream(stream)) == 2

    # Subscriptions

    async def test_subscribe_catches_up_after_a_position_exclusive(self, store: EventStore) -> None:
        prefix = unique()
        first = await store.append(f"{prefix}-a", events(1), NO_STREAM)
        rest = events(2)
        await store.append(f"{prefix}-b", rest[:1], NO_STREAM)
        await store.append(f"{prefix}-a", rest[1:], 0)
        async with subscription(store, first.position) as batches:
            got = await collect(batches, 2, prefix)
        assert [e.event_id for e in got[:2]] == [e.event_id for e in rest]
        assert all(e.position > first.position for e in got)

    async def test_subscribe_from_before_everything_sees_every_event_in_order(
        self, store: EventStore
    ) -> None:
        prefix = unique()
        sent = [events(2), events(1), events(3)]
        for i, batch in enumerate(sent):
            await store.append(f"{prefix}-{i}", batch, NO_STREAM)
        async with subscription(store, 0, [prefix]) as batches:
            got = await collect(batches, 6, prefix)
        assert [e.event_id for e in got] == [e.event_id for b in sent for e in b]
        assert [e.version for e in got] == [0, 1, 0, 0, 1, 2]

    async def test_subscribe_filters_by_stream_prefix(self, store: EventStore) -> None:
        prefix = unique()
        wanted_a, unwanted, wanted_c = events(1), events(2), events(1)
        before = await store.head_position()
        await store.append(f"{prefix}alpha-1", wanted_a, NO_STREAM)
        await store.append(f"{prefix}beta-1", unwanted, NO_STREAM)
        await store.append(f"{prefix}gamma-1", wanted_c, NO_STREAM)
        last = await store.append(f"{prefix}alpha-2", events(1), NO_STREAM)
        async with subscription(store, before, [f"{prefix}alpha-", f"{prefix}gamma-"]) as batches:
            got = await collect(batches, 3, prefix)
        assert [e.stream for e in got] == [
            f"{prefix}alpha-1",
            f"{prefix}gamma-1",
            f"{prefix}alpha-2",
        ]
        assert got[0].event_id == wanted_a[0].event_id
        assert got[1].event_id == wanted_c[0].event_id
        assert got[2].position == last.position

    async def test_subscribe_filters_by_event_type_within_the_streams(
        self, store: EventStore
    ) -> None:
        prefix = unique()
        before = await store.head_position()
        await store.append(f"{prefix}a-1", [event("Opened"), event("Deposited")], NO_STREAM)
        await store.append(f"{prefix}b-1", [event("Debited"), event("Deposited")], NO_STREAM)
        await store.append(unique(), [event("Debited")], NO_STREAM)  # another prefix
        last = await store.append(f"{prefix}a-1", [event("Debited")], 1)
        async with subscription(
            store, before, [f"{prefix}a-", f"{prefix}b-"], ["V1.Opened", "V1.Debited"]
        ) as batches:
            got = await collect(batches, 3, prefix)
        assert [(e.stream, e.type) for e in got] == [
            (f"{prefix}a-1", "V1.Opened"),
            (f"{prefix}b-1", "V1.Debited"),
            (f"{prefix}a-1", "V1.Debited"),
        ]
        assert got[-1].position == last.position

    async def test_a_filtered_subscription_passes_many_other_events(
        self, store: EventStore
    ) -> None:
        prefix = unique()
        before = await store.head_position()
        first = await store.append(f"{prefix}wanted-1", events(1), NO_STREAM)
        for n in range(5):
            await store.append(f"{prefix}other-{n}", events(500), NO_STREAM)
        last = await store.append(f"{prefix}wanted-2", events(1), NO_STREAM)
        async with subscription(store, before, [f"{prefix}wanted-"]) as batches:
            got = await collect(batches, 2, prefix)
            assert [e.position for e in got] == [first.position, last.position]
            waiting = asyncio.create_task(collect(batches, 1, prefix))
            await asyncio.sleep(0.05)  # idle at the head; not a timing assertion
            await store.append(f"{prefix}other-9", events(100), NO_STREAM)
            live = await store.append(f"{prefix}wanted-3", events(1), NO_STREAM)
            assert [e.position for e in await waiting] == [live.position]

    async def test_only_batches_at_the_head_are_caught_up(self, store: EventStore) -> None:
        """`caught_up` lets a reader wait before reading on (pacing): never on a batch with
        more of the log after it, and on the batch of a live append."""
        prefix = unique()
        before = await store.head_position()
        for n in range(5):
            await store.append(f"{prefix}-{n}", events(500), NO_STREAM)
        last = (await store.append(f"{prefix}-last", events(1), NO_STREAM)).position
        async with subscription(store, before, [prefix]) as batches:
            backlog = await until_batch_at(batches, last)
            behind = [b for b in backlog if b.position < last]
            assert behind, "a backlog of 2,501 events came in one batch"
            assert not any(b.caught_up for b in behind)
            waiting = asyncio.create_task(until_batch_at(batches, None))
            await asyncio.sleep(0.05)  # let the subscription go idle; not a timing assertion
            live = await store.append(f"{prefix}-live", events(1), NO_STREAM)
            (batch,) = await waiting
        assert [e.position for e in batch.events] == [live.position]
        assert batch.caught_up

    async def test_subscribe_delivers_live_appends(self, store: EventStore) -> None:
        prefix = unique()
        before = await store.head_position()  # positions are opaque: never do arithmetic
        first = await store.append(f"{prefix}-1", events(1), NO_STREAM)
        async with subscription(store, before, [prefix]) as batches:
            (caught_up,) = await collect(batches, 1, prefix)
            assert caught_up.position == first.position
            waiting = asyncio.create_task(collect(batches, 2, prefix))
            await asyncio.sleep(0.05)  # let the subscription go idle; not a timing assertion
            live = [event(), event()]
            result = await store.append(f"{prefix}-2", live[:1], NO_STREAM)
            await store.append(f"{prefix}-2", live[1:], result.version)
            got = await waiting
        assert [e.event_id for e in got] == [e.event_id for e in live]
        assert got[0].position == result.position

    # A second instance on the same data (another process)

    async def test_another_instance_reads_what_one_appended(
        self, store: EventStore, other_store: EventStore | None
    ) -> None:
        other = self.need(other_store)
        stream = unique()
        new = events(2)
        result = await store.append(stream, new, NO_STREAM)
        recorded = await other.read_stream(stream)
        assert [r.event_id for r in recorded] == [e.event_id for e in new]
        assert await other.head_position() >= result.position
        assert await other.append(stream, new, NO_STREAM) == result  # a retry, recognised

    async def test_concurrent_appends_from_two_instances_exactly_one_wins(
        self, store: EventStore, other_store: EventStore | None
    ) -> None:
        other = self.need(other_store)
        stream = unique()
        await store.append(stream, events(1), NO_STREAM)
        outcomes = await asyncio.gather(
            *((store if i % 2 else other).append(stream, events(1), 0) for i in range(10)),
            return_exceptions=True,
        )
        assert sum(isinstance(o, AppendResult) for o in outcomes) == 1
        assert sum(isinstance(o, WrongExpectedVersion) for o in outcomes) == 9
        assert len(await store.read_stream(stream)) == 2

    async def test_a_subscription_sees_another_instances_live_appends(
        self, store: EventStore, other_store: EventStore | None
    ) -> None:
        other = self.need(other_store)
        prefix = unique()
        before = await store.head_position()
        await store.append(f"{prefix}-1", events(1), NO_STREAM)
        async with subscription(store, before, [prefix]) as batches:
            await collect(batches, 1, prefix)
            waiting = asyncio.create_task(collect(batches, 1, prefix))
            await asyncio.sleep(0.05)  # let the subscription go idle; not a timing assertion
            live = events(1)
            result = await other.append(f"{prefix}-2", live, NO_STREAM)
            (got,) = await waiting
        assert (got.event_id, got.position) == (live[0].event_id, result.position)
