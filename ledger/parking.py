"""Parked events: events a projection could not apply, set aside with their error.

An event whose body cannot be decoded or whose handler raises (a malformed body from
another producer, a bug) would otherwise stop the projector for good or have it retry
forever. The runner parks it instead: a record in the projection's PARKED collection,
written in the same view-store apply as the rest of its batch and the checkpoint that
moves past it, so parking and moving on are one step.

A record is keyed `<checkpoint name>/<position:020d>` and carries where the event is
(stream and version, which every event store can read back), its type, id and error.
Its document position is a revision: the event's position when parked, one more
for each retry, so every retry outcome is a conditional upsert like any other.

`retry_parked` re-reads parked events from the log and applies them again, once the
cause is fixed (usually a new projector release). A record that now applies is marked
resolved (kept for the record, no longer listed or counted). Limitation: upserts are
conditional on the log position, so a view document that a later event has already
changed keeps that later state and misses the retried event's effect (e.g. a balance
would miss a deposit). When a parked event touched documents that have moved on since,
rebuild the views (a new projection version) instead of retrying.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.eventstore.port import EventStore, RecordedEvent
from ledger.projection import PARKED, Projection
from ledger.views.port import Checkpoint, Document, Scalar, Upsert, ViewStore

log = logging.getLogger("ledger.projector")
PAGE = 500
MAX_ERROR = 2000


def utc_now() -> datetime:
    return datetime.now(UTC)


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def parked_key(checkpoint_name: str, position: int) -> str:
    return f"{checkpoint_name}/{position:020d}"


def park(checkpoint_name: str, recorded: RecordedEvent, error: str, now: datetime) -> Upsert:
    """The upsert that parks `recorded` (goes into the batch's apply)."""
    fields: dict[str, Scalar] = {
        "projection": checkpoint_name,
        "position": recorded.position,
        "stream": recorded.stream,
        "version": recorded.version,
        "type": recorded.type,
        "event_id": str(recorded.event_id),
        "recorded_at": recorded.recorded_at.isoformat(),
        "error": error,
        "parked_at": now.isoformat(),
        "attempts": 1,
        "resolved": False,
        "resolved_at": None,
    }
    return Upsert(PARKED, parked_key(checkpoint_name, recorded.position), fields, recorded.position)


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    projection: str
    position: int
    stream: str
    version: int
    type: str
    event_id: str
    error: str
    parked_at: str
    attempts: int

    @classmethod
    def from_document(cls, doc: Mapping[str, object]) -> ParkedEvent:
        def text(name: str) -> str:
            return str(doc.get(name) or "")

        def number(name: str) -> int:
            value = doc.get(name)
            return value if isinstance(value, int) else 0

        return cls(
            projection=text("projection"),
            position=number("position"),
            stream=text("stream"),
            version=number("version"),
            type=text("type"),
            event_id=text("event_id"),
            error=text("error"),
            parked_at=text("parked_at"),
            attempts=number("attempts"),
        )

    @property
    def key(self) -> str:
        return parked_key(self.projection, self.position)


async def parked_events(
    views: ViewStore, checkpoint_name: str, *, position: int | None = None
) -> list[ParkedEvent]:
    """The unresolved parked events of a projection, oldest first (or the one at `position`)."""
    found: list[Document] = []
    after: int | None = None
    while True:
        page = await views.find(
            PARKED,
            where={"projection": checkpoint_name, "resolved": False},
            order_by="position",
            after=after,
            limit=PAGE,
        )
        found.extend(page)
        if len(page) < PAGE:
            break
        last = page[-1]["position"]
        after = last if isinstance(last, int) else None
        if after is None:
            break
    events = [ParkedEvent.from_document(d) for d in found]
    return [e for e in events if position is None or e.position == position]


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    event: ParkedEvent
    error: str | None  # None: applied and resolved


async def _read_back(events: EventStore, parked: ParkedEvent) -> RecordedEvent:
    for recorded in await events.read_stream(parked.stream, parked.version):
        if recorded.version == parked.version:
            if str(recorded.event_id) != parked.event_id:
                raise LookupError(
                    f"{parked.stream} version {parked.version} is event {recorded.event_id},"
                    f" not the parked {parked.event_id}"
                )
            return recorded
        break
    raise LookupError(f"{parked.stream} has no version {parked.version} any more")


async def retry_parked(
    events: EventStore,
    views: ViewStore,
    projection: Projection,
    *,
    position: int | None = None,
    name: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> list[RetryOutcome]:
    """Apply the parked events again; resolve those that now apply, note the new error
    of those that still fail. See the module docstring for what a retry cannot do.

    `name` is the checkpoint of the generation `views` shows (generation 0 by default)."""
    name = name or projection.checkpoint_name
    outcomes = []
    for parked in await parked_events(views, name, position=position):
        now = clock().isoformat()
        revision = parked.position + max(parked.attempts, 1)
        attempts = max(parked.attempts, 1) + 1
        try:
            recorded = await _read_back(events, parked)
            upserts = projection.upserts_for(recorded)
        except Exception as exc:  # reported; the record stays parked
            error = describe(exc)
            fields: dict[str, Scalar] = {"error": error, "attempts": attempts}
            log.error(
                "parked event still fails",
                extra={"projection": name, "position": parked.position, "error": error},
            )
            upserts = [Upsert(PARKED, parked.key, fields, revision)]
            outcomes.append(RetryOutcome(parked, error))
        else:
            fields = {"resolved": True, "resolved_at": now, "attempts": attempts}
            upserts.append(Upsert(PARKED, parked.key, fields, revision))
            log.info(
                "parked event applied", extra={"projection": name, "position": parked.position}
            )
            outcomes.append(RetryOutcome(parked, None))
        # The checkpoint stays where it is (it never moves backwards anyway).
        await views.apply(upserts, Checkpoint(name, await views.checkpoint(name)))
    return outcomes
