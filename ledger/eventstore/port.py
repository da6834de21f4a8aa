"""The event store port: streams with versions, one global log with positions.

Semantics follow EventStoreDB so that every adapter can honour them:
- a stream's versions are 0-based; NO_STREAM (-1) is the version of a stream with no events;
- positions are global, strictly increasing, and never reused;
- appending events whose ids are already stored at the same place in the same stream
  writes nothing and returns the original result (idempotent retries);
- an append is atomic and conditional on the stream's current version;
- a snapshot is an optimisation kept beside the log, never part of it: a reader that
  finds none (or one it cannot use) replays the stream instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from uuid import UUID

NO_STREAM = -1
ANY_VERSION = -2


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: UUID
    type: str
    data: bytes
    metadata: bytes = b"{}"


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    event_id: UUID
    stream: str
    version: int
    position: int
    type: str
    data: bytes
    metadata: bytes
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Version and position of the last event of the append."""

    version: int
    position: int
    deduplicated: bool = field(default=False, compare=False)
    """True if the events were stored by an earlier append (a retry) and nothing was
    written; False also when the store cannot tell (KurrentDB answers both alike)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stream's state folded up to `version` (whose event is at `position`).

    `data` is opaque to the store: the application's state codec writes and reads it.
    """

    version: int
    position: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SubscriptionBatch:
    """Events available now, and the log position the batch accounts for.

    `position` is at least the last event's position; it can be further on when the
    store skipped events filtered out, so a checkpoint never has to re-read them.
    """

    events: tuple[RecordedEvent, ...]
    position: int
    caught_up: bool = False
    """Nothing after `position` was in the log when the batch was read (as far as the
    store can tell; False while catching up). A reader may then wait before it asks for
    more without falling behind (ledger.eventstore.pacing)."""


class EventStore(Protocol):
    async def open(self) -> None:
        """Connect and prepare storage; raise Unavailable if the store cannot be reached."""

    async def close(self) -> None: ...

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> AppendResult:
        """Append atomically if the stream is at `expected_version` (or ANY_VERSION).

        Raises WrongExpectedVersion on a mismatch.
        """

    async def read_stream(
        self, stream: str, from_version: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events of `stream` from `from_version` on, oldest first, at most `limit` of them;
        [] if there are none."""

    async def read_last(self, stream: str) -> RecordedEvent | None:
        """The last event of `stream` (a read backwards from its end), or None: a stream
        whose latest event is all that matters (a checkpoint) costs one event to read
        however long it has grown."""

    async def find_event(self, stream: str, event_id: UUID) -> RecordedEvent | None:
        """The event of `stream` with this id, or None.

        An index lookup where `unique_event_ids` is true; a scan of the stream otherwise.
        """

    @property
    def unique_event_ids(self) -> bool:
        """True if an event id is unique in the whole store, not just where a retry lands:
        an append re-using a stored id anywhere else is refused (WrongExpectedVersion),
        and `find_event` is an index lookup whose cost does not grow with the stream."""

    async def read_snapshot(self, stream: str) -> Snapshot | None:
        """The latest snapshot written for `stream`, or None."""

    async def read_latest(self, stream: str) -> tuple[Snapshot | None, list[RecordedEvent]]:
        """The latest snapshot and the events after its version (every event if there is
        no snapshot): what loading a stream needs, in one round trip where the store can."""

    async def write_snapshot(self, stream: str, snapshot: Snapshot) -> None:
        """Keep `snapshot` for `stream` unless one of a later version is kept already.

        Not an event: subscriptions never deliver it and `head_position` ignores it. It may be
        lost in a crash (the stream is then replayed), so it needs no fsync of its own.
        """

    async def head_position(self, *, stream_prefixes: Sequence[str] = ()) -> int:
        """Position of the last event in the log (in streams with one of these prefixes,
        if any are given: what a subscription so filtered would end at), 0 if none."""

    def subscribe(
        self,
        after_position: int,
        *,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
    ) -> AsyncIterator[SubscriptionBatch]:
        """Catch up from after `after_position` (exclusive), then follow live appends.

        Only events of streams whose names start with one of `stream_prefixes`, and of
        one of `event_types`, are delivered (all, for either left empty); a batch's
        position still passes the others, which are never decoded. Never ends by itself.
        """
