"""The event store contract for the KurrentDB adapter, plus what only this adapter has.

On the stand-in (tests/standins/kurrentdb_server.py, a separate process per module), and
on a real EventStoreDB / KurrentDB node when KURRENTDB_URI is set, e.g.
`KURRENTDB_URI='kurrentdb://localhost:2113?tls=false'`.

Four contract tests are replaced, not weakened: two assert SQLite's global id
uniqueness where EventStoreDB deduplicates ids per stream and per expected revision
(its IndexWriter.CheckCommit), and two subscribe after `position - 1`, which is inside a
log record and which KurrentDB refuses (InvalidPosition). Their replacements assert
what the server does, so they fail if the adapter or the stand-in drifts from it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ledger.errors import Unavailable, WrongExpectedVersion
from ledger.eventstore.kurrentdb import KurrentDBEventStore
from ledger.eventstore.port import (
    ANY_VERSION,
    NO_STREAM,
    EventStore,
    RecordedEvent,
    SubscriptionBatch,
)
from tests.conftest import free_port
from tests.contract.event_store_contract import (
    TIMEOUT,
    EventStoreContract,
    events,
    subscription,
    unique,
)
from tests.standins.kurrentdb_server import StandIn

REPO = Path(__file__).resolve().parents[2]
REAL_URI = os.environ.get("KURRENTDB_URI", "").strip()


@pytest.fixture(scope="module")
def standin_uri() -> Iterator[str]:
    """The stand-in as its own process, the way the end-to-end tests run it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.kurrentdb_server", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on "), f"the stand-in did not start: {line!r}"
        address = line.removeprefix("listening on ").strip()
        yield f"kurrentdb://{address}?tls=false"
    finally:
        process.terminate()
        process.wait(timeout=30)


class KurrentDBContract(EventStoreContract):
    @pytest.fixture
    def uri(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    async def store(self, uri: str) -> AsyncIterator[EventStore]:
        store = KurrentDBEventStore(uri)
        await store.open()
        yield store
        await store.close()

    @pytest.fixture
    async def other_store(self, uri: str) -> AsyncIterator[EventStore | None]:
        store = KurrentDBEventStore(uri)
        await store.open()
        yield store
        await store.close()

    async def test_the_same_ids_in_another_stream_are_another_append(
        self, store: EventStore
    ) -> None:
        # The codec derives ids from the stream name, so the ledger never does this.
        stream, other = unique(), unique()
        new = events(2)
        first = await store.append(stream, new, NO_STREAM)
        second = await store.append(other, new, NO_STREAM)
        assert second.version == 1
        assert second.position > first.position
        assert [r.event_id for r in await store.read_stream(other)] == [e.event_id for e in new]

    async def test_the_same_ids_at_the_current_version_are_appended_again(
        self, store: EventStore
    ) -> None:
        # A retry is only recognised where it would land; the command handler replays a
        # request from the stream's metadata before it ever appends, so it never does this.
        stream = unique()
        new = events(1)
        await store.append(stream, new, NO_STREAM)
        again = await store.append(stream, new, 0)
        assert again.version == 1
        assert [r.event_id for r in await store.read_stream(stream)] == [new[0].event_id] * 2

    async def test_an_idempotent_any_version_retry_finds_its_original_version(
        self, store: EventStore
    ) -> None:
        # The server reports no revision to this client: the adapter reads it back,
        # paging backwards past what was appended since.
        stream = unique()
        retried = events(1)
        original = await store.append(stream, retried, ANY_VERSION)
        for _ in range(3):
            await store.append(stream, events(50), ANY_VERSION)
        assert await store.append(stream, retried, ANY_VERSION) == original
        assert len(await store.read_stream(stream)) == 151


class TestKurrentDBEventStoreOnStandIn(KurrentDBContract):
    @pytest.fixture
    def uri(self, standin_uri: str) -> str:
        return standin_uri


@pytest.mark.skipif(not REAL_URI, reason="KURRENTDB_URI is not set")
class TestKurrentDBEventStoreOnRealServer(KurrentDBContract):
    @pytest.fixture
    def uri(self) -> str:
        return REAL_URI


# What only this adapter has: outages, resubscription, the server's own streams.


@pytest.fixture
async def node() -> AsyncIterator[StandIn]:
    stand_in = StandIn()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture
async def adapter(node: StandIn) -> AsyncIterator[KurrentDBEventStore]:
    store = KurrentDBEventStore(node.uri, max_backoff=0.5)
    await store.open()
    yield store
    await store.close()


async def next_batches(
    batches: AsyncIterator[SubscriptionBatch], until: int
) -> list[SubscriptionBatch]:
    """Batches up to and including the first one whose position reaches `until`."""

    async def run() -> list[SubscriptionBatch]:
        got: list[SubscriptionBatch] = []
        async for batch in batches:
            got.append(batch)
            if batch.position >= until:
                return got
        raise AssertionError("a subscription ended by itself")

    return await asyncio.wait_for(run(), TIMEOUT)


def delivered(batches: list[SubscriptionBatch]) -> list[RecordedEvent]:
    return [e for b in batches for e in b.events]


async def test_open_against_a_closed_port_raises_unavailable() -> None:
    store = KurrentDBEventStore(f"kurrentdb://127.0.0.1:{free_port()}?tls=false")
    with pytest.raises(Unavailable, match="unavailable"):
        await asyncio.wait_for(store.open(), TIMEOUT)
    await store.close()


def test_a_malformed_uri_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="scheme"):
        KurrentDBEventStore("http://localhost:2113")
    with pytest.raises(ValueError, match="Username and password"):
        KurrentDBEventStore("kurrentdb://localhost:2113")  # TLS by default: needs credentials
    with pytest.raises(ValueError, match="Unknown field") as info:
        KurrentDBEventStore("kurrentdb://admin:s3cret@localhost:2113?Tls=false&Nope=1")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError, match="scheme") as info:
        KurrentDBEventStore("esdbx://admin:s3cret@localhost:2113")
    assert "s3cret" not in str(info.value)
    assert "admin:***@localhost" in str(info.value)


async def test_calls_during_an_outage_raise_unavailable_and_work_again_after(
    node: StandIn, adapter: KurrentDBEventStore
) -> None:
    stream = unique()
    sent = events(1)
    await node.stop()
    with pytest.raises(Unavailable):
        await adapter.append(stream, sent, NO_STREAM)
    with pytest.raises(Unavailable):
        await adapter.read_stream(stream)
    with pytest.raises(Unavailable):
        await adapter.head_position()
    await node.start()
    result = await adapter.append(stream, sent, NO_STREAM)
    assert [r.event_id for r in await adapter.read_stream(stream)] == [sent[0].event_id]
    assert await adapter.head_position() == result.position


async def test_a_subscription_resumes_after_the_node_restarts_without_gaps_or_repeats(
    node: StandIn, adapter: KurrentDBEventStore
) -> None:
    prefix = unique()
    before = events(3)
    for e in before:
        await adapter.append(f"{prefix}-{e.event_id}", [e], NO_STREAM)
    async with subscription(adapter, 0, [prefix]) as batches:
        first = delivered(await next_batches(batches, (await adapter.head_position())))
        assert [e.event_id for e in first] == [e.event_id for e in before]
        await node.stop()
        await node.start()  # same port, same log
        after = events(3)
        writer = KurrentDBEventStore(node.uri)
        await writer.open()
        last = 0
        for e in after:
            last = (await writer.append(f"{prefix}-{e.event_id}", [e], NO_STREAM)).position
        await writer.close()
        second = delivered(await next_batches(batches, last))
    assert [e.event_id for e in second] == [e.event_id for e in after]
    positions = [e.position for e in first + second]
    assert positions == sorted(set(positions))


async def test_a_subscription_resumes_after_the_server_drops_a_slow_consumer(
    node: StandIn, adapter: KurrentDBEventStore
) -> None:
    prefix = unique()
    first = await adapter.append(f"{prefix}-1", events(2), NO_STREAM)
    async with subscription(adapter, 0, [prefix]) as batches:
        got = delivered(await next_batches(batches, first.position))
        node.drop_subscriptions()
        second = await adapter.append(f"{prefix}-1", events(2), first.version)
        got += delivered(await next_batches(batches, second.position))
    assert [e.version for e in got] == [0, 1, 2, 3]


async def test_the_servers_own_streams_are_never_delivered(
    node: StandIn, adapter: KurrentDBEventStore
) -> None:
    assert node.log.records[0].stream.startswith("$")  # a fresh node has system events
    assert await adapter.head_position() == 0
    stream = unique()
    result = await adapter.append(stream, events(1), NO_STREAM)
    async with subscription(adapter, 0) as batches:
        got = delivered(await next_batches(batches, result.position))
    assert [e.stream for e in got] == [stream]


async def test_a_checkpoint_at_the_end_of_the_log_does_not_make_a_restart_skip_an_event() -> None:
    # KurrentDB issue #4970: some versions checkpoint at the end of the log, where the
    # next event will be written; resuming after that position would skip that event.
    node = StandIn(end_of_log_checkpoints=True)
    await node.start()
    store = KurrentDBEventStore(node.uri)
    await store.open()
    try:
        prefix = unique()
        await store.append(unique("unwanted"), events(1), NO_STREAM)
        async with subscription(store, 0, [prefix]) as batches:
            (checkpoint,) = await next_batches(batches, 1)
        assert checkpoint.events == ()
        wanted = await store.append(f"{prefix}-1", events(1), NO_STREAM)
        async with subscription(store, checkpoint.position, [prefix]) as batches:
            got = delivered(await next_batches(batches, wanted.position))
        assert [e.position for e in got] == [wanted.position]
    finally:
        await store.close()
        await node.stop()


async def test_a_refused_append_reports_the_streams_actual_version(
    adapter: KurrentDBEventStore,
) -> None:
    stream = unique()
    await adapter.append(stream, events(3), NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as info:
        await adapter.append(stream, events(1), 0)
    assert (info.value.expected, info.value.actual) == (0, 2)
    with pytest.raises(WrongExpectedVersion) as info:
        await adapter.append(unique(), events(1), 4)
    assert info.value.actual == NO_STREAM


async def test_find_event_pages_back_through_a_long_stream(adapter: KurrentDBEventStore) -> None:
    stream = unique()
    first = events(1)
    await adapter.append(stream, first, NO_STREAM)
    for _ in range(3):
        await adapter.append(stream, events(250), ANY_VERSION)
    found = await adapter.find_event(stream, first[0].event_id)
    assert found is not None
    assert (found.version, found.event_id) == (0, first[0].event_id)
    assert not adapter.unique_event_ids  # so the command handler takes no snapshots here
