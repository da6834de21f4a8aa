"""The KurrentDB stand-in, driven through the real kurrentdbclient (async and sync).

These pin the server behaviour the adapter relies on, as the server's source and
kurrentdbclient's documentation describe it, so a stand-in that drifts fails here
rather than letting the adapter's tests pass against the wrong semantics.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from kurrentdbclient import (
    AsyncKurrentDBClient,
    KurrentDBClient,
    NewEvent,
    RecordedEvent,
    StreamState,
)
from kurrentdbclient.exceptions import (
    ConsumerTooSlowError,
    InvalidCommitPositionError,
    NotFoundError,
    WrongCurrentVersionError,
)

from tests.standins.kurrentdb_server import StandIn

GUARD = 15.0  # against a hang, never a performance bound


@pytest.fixture
async def node() -> AsyncIterator[StandIn]:
    stand_in = StandIn()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture
async def client(node: StandIn) -> AsyncIterator[AsyncKurrentDBClient]:
    client = AsyncKurrentDBClient(node.uri)
    await client.connect()
    yield client
    await client.close()


def new(n: int) -> list[NewEvent]:
    return [NewEvent(type="Tested", data=b'{"n":%d}' % i, metadata=b"{}") for i in range(n)]


def name() -> str:
    return f"standin-{uuid.uuid4().hex}"


async def take(items: AsyncIterator[RecordedEvent], count: int) -> list[RecordedEvent]:
    async def run() -> list[RecordedEvent]:
        got: list[RecordedEvent] = []
        async for item in items:
            got.append(item)
            if len(got) == count:
                return got
        raise AssertionError("the subscription ended")

    return await asyncio.wait_for(run(), GUARD)


async def test_appends_number_revisions_and_return_the_last_commit_position(
    client: AsyncKurrentDBClient,
) -> None:
    stream = name()
    position = await client.append_to_stream(
        stream, events=new(3), current_version=StreamState.NO_STREAM
    )
    recorded = await client.get_stream(stream)
    assert [r.stream_position for r in recorded] == [0, 1, 2]
    positions = [r.commit_position for r in recorded]
    assert positions == sorted(set(positions))
    assert positions[-1] == position
    assert positions[1] - positions[0] > 1  # log offsets, not a counter
    assert all(r.recorded_at is not None and r.recorded_at.tzinfo for r in recorded)
    assert await client.get_current_version(stream) == 2


async def test_a_retry_at_the_same_expected_revision_returns_the_original_position(
    client: AsyncKurrentDBClient,
) -> None:
    stream = name()
    await client.append_to_stream(stream, events=new(1), current_version=StreamState.NO_STREAM)
    batch = new(2)
    original = await client.append_to_stream(stream, events=batch, current_version=0)
    await client.append_to_stream(stream, events=new(1), current_version=2)
    assert await client.append_to_stream(stream, events=batch, current_version=0) == original
    any_retry = await client.append_to_stream(stream, events=batch, current_version=StreamState.ANY)
    assert any_retry == original
    assert await client.get_current_version(stream) == 3


async def test_partial_or_misplaced_retries_are_wrong_expected_versions(
    client: AsyncKurrentDBClient,
) -> None:
    stream = name()
    batch = new(2)
    await client.append_to_stream(stream, events=batch, current_version=StreamState.NO_STREAM)
    for events, expected in (
        ([*batch, *new(1)], StreamState.NO_STREAM),  # runs past the stream's end
        ([batch[0], *new(1)], StreamState.NO_STREAM),  # second id differs
        (new(1), 0),  # stale
        (new(1), 5),  # ahead
        ([batch[0], *new(1)], StreamState.ANY),  # first id stored, second not
    ):
        with pytest.raises(WrongCurrentVersionError) as info:
            await client.append_to_stream(stream, events=events, current_version=expected)
        assert info.value.actual_version == 1
    assert await client.get_current_version(stream) == 1


async def test_stream_exists_needs_an_existing_stream(client: AsyncKurrentDBClient) -> None:
    stream = name()
    with pytest.raises(WrongCurrentVersionError) as info:
        await client.append_to_stream(stream, events=new(1), current_version=StreamState.EXISTS)
    assert info.value.actual_version is StreamState.NO_STREAM
    await client.append_to_stream(stream, events=new(1), current_version=StreamState.ANY)
    await client.append_to_stream(stream, events=new(1), current_version=StreamState.EXISTS)
    assert await client.get_current_version(stream) == 1


async def test_reading_streams_forwards_backwards_and_missing(
    client: AsyncKurrentDBClient,
) -> None:
    stream = name()
    await client.append_to_stream(stream, events=new(5), current_version=StreamState.NO_STREAM)
    forwards = await client.get_stream(stream, stream_position=2, limit=2)
    assert [r.stream_position for r in forwards] == [2, 3]
    backwards = await client.get_stream(stream, backwards=True, limit=2)
    assert [r.stream_position for r in backwards] == [4, 3]
    assert await client.get_stream(stream, stream_position=5) == ()
    with pytest.raises(NotFoundError):
        await client.get_stream(name())
    assert await client.get_current_version(name()) is StreamState.NO_STREAM


async def test_all_holds_system_events_and_reads_from_a_position(
    client: AsyncKurrentDBClient,
) -> None:
    everything = [e async for e in await client.read_all(filter_exclude=())]
    assert everything
    assert all(e.stream_name.startswith("$") for e in everything)
    stream = name()
    await client.append_to_stream(stream, events=new(3), current_version=StreamState.NO_STREAM)
    mine = [e async for e in await client.read_all()]  # the default filter drops $-types
    assert [e.stream_name for e in mine] == [stream] * 3
    middle = mine[1].commit_position
    forwards = [e async for e in await client.read_all(commit_position=middle)]
    assert [e.commit_position for e in forwards] == [middle, mine[2].commit_position]
    backwards = [e async for e in await client.read_all(commit_position=middle, backwards=True)]
    assert backwards[0].commit_position == mine[0].commit_position
    assert await client.get_commit_position() == mine[2].commit_position


async def test_a_position_inside_a_record_is_refused(client: AsyncKurrentDBClient) -> None:
    stream = name()
    position = await client.append_to_stream(
        stream, events=new(1), current_version=StreamState.NO_STREAM
    )
    with pytest.raises(InvalidCommitPositionError):
        _ = [e async for e in await client.read_all(commit_position=position - 1)]
    with pytest.raises(InvalidCommitPositionError):
        await client.subscribe_to_all(commit_position=position - 1)


async def test_a_filtered_subscription_starts_after_its_position_and_checkpoints(
    client: AsyncKurrentDBClient,
) -> None:
    wanted, other = name(), name()
    first = await client.append_to_stream(
        wanted, events=new(1), current_version=StreamState.NO_STREAM
    )
    for _ in range(5):
        await client.append_to_stream(other, events=new(1), current_version=StreamState.ANY)
    last = await client.append_to_stream(wanted, events=new(1), current_version=0)
    subscription = await client.subscribe_to_all(
        commit_position=first,
        filter_include=[f"{wanted}.*"],
        filter_by_stream_name=True,
        include_checkpoints=True,
        include_caught_up=True,
        window_size=2,
        checkpoint_interval_multiplier=1,
    )
    async with subscription:
        # considered after `first`: 5 others then ours; a checkpoint every 2 considered
        got = await take(subscription, 5)
    kinds = ["C" if g.is_checkpoint else "U" if g.is_caught_up else "E" for g in got]
    # the caught-up checkpoint would repeat the last one: the server sends it once
    assert kinds == ["C", "C", "E", "C", "U"]
    assert got[2].commit_position == got[3].commit_position == last
    assert got[0].commit_position < got[1].commit_position < last


async def test_a_stream_subscription_starts_after_its_revision_and_goes_live(
    client: AsyncKurrentDBClient,
) -> None:
    stream = name()
    await client.append_to_stream(stream, events=new(3), current_version=StreamState.NO_STREAM)
    subscription = await client.subscribe_to_stream(stream, stream_position=1)
    async with subscription:
        (caught_up,) = await take(subscription, 1)
        assert caught_up.stream_position == 2
        await client.append_to_stream(stream, events=new(1), current_version=2)
        (live,) = await take(subscription, 1)
    assert live.stream_position == 3


async def test_a_slow_consumer_is_dropped_when_asked(
    node: StandIn, client: AsyncKurrentDBClient
) -> None:
    stream = name()
    await client.append_to_stream(stream, events=new(1), current_version=StreamState.NO_STREAM)
    subscription = await client.subscribe_to_all(
        filter_include=[f"{stream}.*"], filter_by_stream_name=True
    )
    await take(subscription, 1)
    node.drop_subscriptions()
    with pytest.raises(ConsumerTooSlowError):
        await take(subscription, 1)


async def test_cluster_discovery_finds_the_node(node: StandIn) -> None:
    client = AsyncKurrentDBClient(f"kurrentdb+discover://{node.host}:{node.port}?tls=false")
    await client.connect()
    try:
        assert client.connection_target == f"{node.host}:{node.port}"
        await client.append_to_stream(name(), events=new(1), current_version=StreamState.ANY)
    finally:
        await client.close()


async def test_the_sync_client_appends_single_events_through_append(node: StandIn) -> None:
    stream = name()

    def use_sync_client() -> tuple[int, int]:
        client = KurrentDBClient(node.uri)
        try:
            (one,) = new(1)
            first = client.append_to_stream(
                stream, events=one, current_version=StreamState.NO_STREAM
            )
            again = client.append_to_stream(
                stream, events=one, current_version=StreamState.NO_STREAM
            )
            with pytest.raises(WrongCurrentVersionError):
                client.append_to_stream(stream, events=new(1)[0], current_version=5)
            return first, again
        finally:
            client.close()

    first, again = await asyncio.to_thread(use_sync_client)
    assert first == again > 0
