"""The event store port: streams with versions, one global log with positions.

Semantics follow EventStoreDB so that every adapter can honour them:
- a stream's versions are 0-based; NO_STREAM (-1) is the version of a stream with no events;
- positions are global, strictly increasing, and never reused;
- appending events whose ids are already stored at the same place in the same stream
  writes nothing and returns the original result (idempotent retries);
- an append is atomic and conditional on the stream's current version.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class SubscriptionBatch:
    """Events available now, and the log position the batch accounts for.

    `position` is at least the last event's position; it can be further on when the
    store skipped events filtered out, so a checkpoint never has to re-read them.
    """

    events: tuple[RecordedEvent, ...]
    position: int


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

    async def read_stream(self, stream: str, from_version: int = 0) -> list[RecordedEvent]:
        """Events of `stream` from `from_version` on, oldest first; [] if there are none."""

    async def head_position(self) -> int:
        """Position of the last event in the log, 0 if the log is empty."""

    def subscribe(
        self, after_position: int, *, stream_prefixes: Sequence[str] = ()
    ) -> AsyncIterator[SubscriptionBatch]:
        """Catch up from after `after_position` (exclusive), then follow live appends.

        Only streams whose names start with one of `stream_prefixes` are delivered
        (all streams if empty). Never ends by itself.
        """
