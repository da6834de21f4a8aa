"""The production event store: EventStoreDB / KurrentDB through kurrentdbclient's asyncio client.

Mapping to the port:
- versions are stream revisions; positions are commit positions in $all (a log offset,
  so strictly increasing and unique per event, but not consecutive);
- expected versions: NO_STREAM -> StreamState.NO_STREAM, ANY_VERSION -> StreamState.ANY,
  else the revision; the server refuses a mismatch (WrongExpectedVersion);
- retries are idempotent because event ids come from the caller: the server deduplicates
  ids at the same place in the same stream and answers with the original position. It
  does not refuse the same ids elsewhere (another stream, or after the stream moved on
  with an exact expected version equal to the current one): ids are per stream there;
- subscriptions read $all filtered by stream name (which also keeps out the server's
  own $-prefixed streams), with checkpoints, so a consumer's stored position moves past
  events it does not want; event types, if asked for, are filtered here (the server
  filters by one or the other); a dropped subscription is resumed after the last position
  handed out, with backoff, never repeating or skipping an event;
- a stream's snapshots are events of the stream `snapshot-<stream>` (the latest is the
  last one), which subscriptions and head_position leave out: no category a consumer
  subscribes to can match it, and the catch-all filter excludes the prefix;
- there is no index by event id, so `find_event` reads the stream backwards, and ids
  are only deduplicated where a retry lands (`unique_event_ids` is false: the command
  handler then takes no snapshots and keeps every request id in its cache).

Connectivity failures (node down, deadline exceeded, no leader) become Unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Final, NoReturn
from urllib.parse import urlsplit
from uuid import UUID

from kurrentdbclient import AsyncKurrentDBClient, StreamState
from kurrentdbclient import NewEvent as KurrentNewEvent
from kurrentdbclient import RecordedEvent as KurrentRecordedEvent
from kurrentdbclient.connection_spec import ConnectionSpec
from kurrentdbclient.exceptions import (
    AbortedByServerError,
    DeadlineExceededError,
    DiscoveryFailedError,
    GrpcError,
    KurrentDBClientError,
    NodeIsNotLeaderError,
    NotFoundError,
    ProgrammingError,
    WrongCurrentVersionError,
)

from ledger.backoff import Backoff
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

log = logging.getLogger("ledger.eventstore.kurrentdb")

CONTENT_TYPE: Final = "application/json"
EPOCH: Final = datetime.fromtimestamp(0, UTC)
PROBE_STREAM: Final = "ledger-connection-check"
"""Read (never written) by open() to prove the node answers; a user stream, so any user may."""
SNAPSHOT_PREFIX: Final = "snapshot-"
SNAPSHOT_TYPE: Final = "Snapshot"
USER_STREAMS: Final = r"(?!\$|snapshot-).*"
"""Every stream except the server's own ($-prefixed) ones and the snapshots."""
GRPC_OPTIONS: Final = (
    # The client replaces its channel when a call finds the node down; with gRPC's global
    # subchannel pool the new channel would inherit the old one's reconnect backoff
    # (up to 120 s) and keep failing after the node is back.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_reconnect_backoff_ms", 5000),
)
MAX_BATCH: Final = 500
LOCATE_PAGE: Final = 64

TRANSIENT: Final = (
    GrpcError,  # ServiceUnavailableError, GrpcDeadlineExceededError, CancelledError, ...
    DeadlineExceededError,
    DiscoveryFailedError,
    NodeIsNotLeaderError,
    AbortedByServerError,  # ConsumerTooSlowError, "server is busy"
)
"""Failures that say nothing about the request itself: retrying later may succeed."""


class KurrentDBEventStore:
    def __init__(
        self,
        uri: str,
        *,
        deadline: float = 10.0,
        max_backoff: float = 5.0,
        window_size: int = 32,
        checkpoint_interval_multiplier: int = 5,
    ) -> None:
        """`uri`: a kurrentdbclient connection string; ValueError if malformed.

        `deadline` bounds every call but a subscription; a subscription that drops is
        resumed after 0.1 s, doubling up to `max_backoff`. The server sends a checkpoint
        every `window_size * checkpoint_interval_multiplier` events it filtered.
        """
        try:
            spec = ConnectionSpec(uri)  # validates now, so a bad setting fails at start-up
        except ValueError as exc:
            raise ValueError(str(exc).replace(uri, _redacted(uri))) from None
        self._uri = uri
        self._where = ",".join(spec.targets)
        self._deadline = deadline
        self._max_backoff = max_backoff
        self._window_size = window_size
        self._checkpoint_multiplier = checkpoint_interval_multiplier
        self._client: AsyncKurrentDBClient | None = None

    @property
    def _db(self) -> AsyncKurrentDBClient:
        if self._client is None:
            raise RuntimeError("event store is not open")
        return self._client

    def _unavailable(self, exc: BaseException) -> NoReturn:
        reason = str(exc) or type(exc).__name__
        raise Unavailable(f"KurrentDB at {self._where} unavailable: {reason}") from exc

    async def open(self) -> None:
        await self.close()
        client = AsyncKurrentDBClient(self._uri)
        client.grpc_options = (*client.grpc_options, *GRPC_OPTIONS)
        try:
            await client.connect()
            # A single-node URI connects lazily: one small read proves the node answers.
            await client.get_current_version(PROBE_STREAM, timeout=self._deadline)
        except TRANSIENT as exc:
            await _close_quietly(client)
            self._unavailable(exc)
        except BaseException:
            await _close_quietly(client)
            raise
        self._client = client
        log.info("event store open", extra={"kurrentdb": self._where})

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _close_quietly(client)

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> AppendResult:
        if not events:
            raise ValueError("an append needs at least one event")
        if expected_version < ANY_VERSION:
            raise ValueError(f"expected_version {expected_version} is not a version")
        current: int | StreamState
        if expected_version == NO_STREAM:
            current = StreamState.NO_STREAM
        elif expected_version == ANY_VERSION:
            current = StreamState.ANY
        else:
            current = expected_version
        new_events = [
            KurrentNewEvent(
                type=e.type,
                data=e.data,
                metadata=e.metadata,
                content_type=CONTENT_TYPE,
                id=e.event_id,
            )
            for e in events
        ]
        try:
            position = await self._db.append_to_stream(
                stream, events=new_events, current_version=current, timeout=self._deadline
            )
            if expected_version != ANY_VERSION and position > 0:
                # Written after `expected_version`, or found there already (a retry).
                return AppendResult(expected_version + len(events), position)
            return await self._locate(stream, events[-1], position)
        except WrongCurrentVersionError as exc:
            actual = exc.actual_version
            raise WrongExpectedVersion(
                stream, expected_version, actual if isinstance(actual, int) else NO_STREAM
            ) from None
        except TRANSIENT as exc:
            self._unavailable(exc)

    async def _locate(self, stream: str, last: NewEvent, position: int) -> AppendResult:
        """Where the append's last event is, read back from the end of the stream.

        Needed for ANY_VERSION, whose revision the server does not report to this client,
        and if a server answered without a position. Later appends by others only push
        the event further back, so this pages backwards until it finds it.
        """
        recorded = await self._find(stream, last.event_id, LOCATE_PAGE)
        if recorded is None:
            raise RuntimeError(f"appended event {last.event_id} is not in stream {stream!r}")
        return AppendResult(recorded.stream_position, position or recorded.commit_position)

    async def read_stream(
        self, stream: str, from_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        recorded = await self._get(
            stream, max(from_version, 0), backwards=False, limit=limit or sys.maxsize
        )
        return [_to_port(r) for r in recorded]

    async def read_last(self, stream: str) -> RecordedEvent | None:
        last = await self._get(stream, None, backwards=True, limit=1)
        return _to_port(last[0]) if last else None

    async def _get(
        self, stream: str, revision: int | None, *, backwards: bool, limit: int
    ) -> tuple[KurrentRecordedEvent, ...]:
        try:
            return await self._db.get_stream(
                stream,
                stream_position=revision,
                backwards=backwards,
                limit=limit,
                timeout=self._deadline,
            )
        except NotFoundError:
            return ()
        except TRANSIENT as exc:
            self._unavailable(exc)

    @property
    def unique_event_ids(self) -> bool:
        return False

    async def find_event(self, stream: str, event_id: UUID) -> RecordedEvent | None:
        """Pages backwards from the end: recent requests are found first."""
        recorded = await self._find(stream, event_id, MAX_BATCH)
        return None if recorded is None else _to_port(recorded)

    async def _find(
        self, stream: str, event_id: UUID, page_size: int
    ) -> KurrentRecordedEvent | None:
        """The event with this id, read backwards from the end of the stream a page at a
        time (no index by id: later events only push it further back)."""
        revision: int | None = None
        while revision is None or revision >= 0:
            page = await self._get(stream, revision, backwards=True, limit=page_size)
            for recorded in page:
                if recorded.id == event_id:
                    return recorded
            if len(page) < page_size:
                return None
            revision = page[-1].stream_position - 1
        return None

    async def read_snapshot(self, stream: str) -> Snapshot | None:
        page = await self._get(SNAPSHOT_PREFIX + stream, None, backwards=True, limit=1)
        if not page or page[0].type != SNAPSHOT_TYPE:
            return None
        try:
            where = json.loads(page[0].metadata)
            return Snapshot(int(where["version"]), int(where["position"]), page[0].data)
        except (ValueError, KeyError, TypeError):
            return None  # not ours: the caller replays instead

    async def read_latest(self, stream: str) -> tuple[Snapshot | None, list[RecordedEvent]]:
        snapshot = await self.read_snapshot(stream)
        after = NO_STREAM if snapshot is None else snapshot.version
        return snapshot, await self.read_stream(stream, after + 1)

    async def write_snapshot(self, stream: str, snapshot: Snapshot) -> None:
        latest = await self.read_snapshot(stream)
        if latest is not None and latest.version >= snapshot.version:
            return
        where = {"version": snapshot.version, "position": snapshot.position}
        event = KurrentNewEvent(
            type=SNAPSHOT_TYPE,
            data=snapshot.data,
            metadata=json.dumps(where).encode(),
            content_type="application/octet-stream",
        )
        try:
            await self._db.append_to_stream(
                SNAPSHOT_PREFIX + stream,
                events=[event],
                current_version=StreamState.ANY,
                timeout=self._deadline,
            )
        except TRANSIENT as exc:
            self._unavailable(exc)

    async def head_position(self, *, stream_prefixes: Sequence[str] = ()) -> int:
        """Position of the last event outside the server's own $-streams and snapshots,
        in the streams with these prefixes if any are given (0 if none)."""
        try:
            return await self._last_position_before(None, _streams_regex(stream_prefixes))
        except TRANSIENT as exc:
            self._unavailable(exc)

    async def _last_position_before(self, position: int | None, streams: str | None) -> int:
        """Commit position of the last event (in `streams`, a regex) before `position`."""
        response = await self._db.read_all(
            commit_position=position,
            backwards=True,
            filter_include=() if streams is None else (streams,),
            filter_exclude=(),
            filter_by_stream_name=True,
            limit=2,
            timeout=self._deadline,
        )
        async with response:
            async for recorded in response:
                if position is None or recorded.commit_position < position:
                    return recorded.commit_position
        return 0

    async def subscribe(
        self,
        after_position: int,
        *,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
    ) -> AsyncIterator[SubscriptionBatch]:
        """Catch up after `after_position`, then follow; resubscribes when dropped.

        A checkpoint from the server becomes an empty batch at the position of the last
        event *before* the checkpoint: some server versions hand out the end of the log
        as a checkpoint, where the next event will be written, and resuming after that
        would skip it (KurrentDB issue #4970).

        The server filters by stream name; `event_types` are filtered here (a server-side
        filter takes stream names or event types, not both), before any decoding.

        A batch is caught up when the server has said it caught up (and not since that
        it fell behind) and nothing more is waiting: the batch that ends a catch-up may
        not be marked, the live ones after it are.
        """
        pattern = _streams_regex(stream_prefixes)
        types = frozenset(event_types)
        last = after_position
        backoff = Backoff(first=0.1, cap=self._max_backoff)
        while True:
            items: asyncio.Queue[KurrentRecordedEvent | BaseException] = asyncio.Queue(MAX_BATCH)
            try:
                subscription = await self._db.subscribe_to_all(
                    commit_position=last or None,
                    filter_include=(pattern,),
                    filter_by_stream_name=True,
                    include_checkpoints=True,
                    window_size=self._window_size,
                    checkpoint_interval_multiplier=self._checkpoint_multiplier,
                    include_caught_up=True,
                    include_fell_behind=True,
                )
            except TRANSIENT as exc:
                await self._pause(exc, last, backoff)
                continue
            pump = asyncio.create_task(_pump(subscription, items), name="kurrentdb-subscription")
            live = False  # the server said it caught up (and did not fall behind since)
            try:
                while True:
                    taken = [await items.get()]
                    while not items.empty() and len(taken) < MAX_BATCH:
                        taken.append(items.get_nowait())
                    # The pump ends with the failure, so whatever came before it still counts.
                    failure = next((i for i in taken if isinstance(i, BaseException)), None)
                    received = []
                    for item in taken:
                        if isinstance(item, KurrentRecordedEvent):
                            if item.is_caught_up or item.is_fell_behind:
                                live = item.is_caught_up
                            else:
                                received.append(item)
                    batch = await self._batch(received, last, types, live and items.empty())
                    if batch is not None:
                        yield batch
                        last = batch.position
                        backoff.reset()
                    if failure is not None:
                        raise failure
            except TRANSIENT as exc:  # dropped, or reading a checkpoint's position back failed
                await self._pause(exc, last, backoff)
            finally:
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
                with contextlib.suppress(Exception):
                    await subscription.stop()

    async def _batch(
        self,
        received: list[KurrentRecordedEvent],
        last: int,
        types: frozenset[str],
        caught_up: bool,
    ) -> SubscriptionBatch | None:
        events: list[RecordedEvent] = []
        position = last
        for item in received:
            if item.commit_position <= position:
                continue  # already handed out (a resubscription overlaps) or stale
            if item.is_checkpoint:
                position = max(position, await self._checkpoint_position(item.commit_position))
            else:
                if not types or item.type in types:
                    events.append(_to_port(item))
                position = item.commit_position
        if position <= last:
            return None
        return SubscriptionBatch(tuple(events), position, caught_up)

    async def _checkpoint_position(self, checkpoint: int) -> int:
        """The last event before a checkpoint: a position that is safe to resume after."""
        try:
            return await self._last_position_before(checkpoint, None)
        except TRANSIENT:
            raise
        except KurrentDBClientError as exc:  # e.g. a server that cannot read from there
            log.warning("checkpoint ignored", extra={"checkpoint": checkpoint, "error": str(exc)})
            return 0

    async def _pause(self, exc: BaseException, last: int, backoff: Backoff) -> None:
        log.warning(
            f"subscription dropped, resubscribing in {backoff.delay:.1f}s",
            extra={"kurrentdb": self._where, "after_position": last, "error": str(exc)},
        )
        await asyncio.sleep(backoff.take())


async def _pump(
    subscription: AsyncIterator[KurrentRecordedEvent],
    items: asyncio.Queue[KurrentRecordedEvent | BaseException],
) -> None:
    """Moves what the subscription receives into `items`, ending with the failure."""
    try:
        async for item in subscription:
            await items.put(item)
        raise GrpcError("the server ended the subscription")
    except Exception as exc:
        await items.put(exc)


def _streams_regex(prefixes: Sequence[str]) -> str:
    """One anchored-by-the-client alternative: `^(?:p1|p2).*$`, never a $-stream or a
    snapshot."""
    if not prefixes:
        return USER_STREAMS
    escaped = "|".join(re.escape(p) for p in prefixes)
    return f"(?!\\$|{SNAPSHOT_PREFIX})(?:{escaped}).*"


def _redacted(uri: str) -> str:
    """The URI without its password, fit for an error message or a log."""
    password = urlsplit(uri).password
    return uri.replace(f":{password}@", ":***@") if password else uri


def _to_port(recorded: KurrentRecordedEvent) -> RecordedEvent:
    return RecordedEvent(
        event_id=recorded.id,
        stream=recorded.stream_name,
        version=recorded.stream_position,
        position=recorded.commit_position,
        type=recorded.type,
        data=bytes(recorded.data),
        metadata=bytes(recorded.metadata),
        recorded_at=recorded.recorded_at or EPOCH,  # a server always sends "created"
    )


async def _close_quietly(client: AsyncKurrentDBClient) -> None:
    with contextlib.suppress(ProgrammingError, KurrentDBClientError, AttributeError):
        await client.close()
