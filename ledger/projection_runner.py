"""Keeps a projection's views up to date from the event log.

It resumes from the checkpoint stored *with* the views, applies each subscription
batch and the new checkpoint in one view-store write, and on stop finishes the batch
in hand first: a kill at any instant leaves views equal to a rebuild up to the
checkpoint, and the next start carries on from there.

An event that cannot be decoded or handled is parked (ledger.parking) in that same
write, logged, and counted; the runner carries on with the next one.

While it runs it publishes its status (ledger.views.port.ViewStore.save_status, under
the checkpoint's name) about once a second and on every change: state, head of the
log, lag, rate, parked events and the last error. The query server reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ledger.backoff import Backoff
from ledger.errors import Unavailable
from ledger.eventstore.pacing import LIVE_PACE, paced
from ledger.eventstore.port import EventStore, RecordedEvent, SubscriptionBatch
from ledger.generations import Generation, GenerationViews
from ledger.parking import describe, park, parked_events, utc_now
from ledger.projection import Projection
from ledger.views.port import Checkpoint, StatusValue, Upsert, ViewStore

log = logging.getLogger("ledger.projector")
RATE_WINDOW = 10.0
"""Seconds over which events_per_second is measured."""


class State(enum.StrEnum):
    CATCHING_UP = "CATCHING_UP"
    LIVE = "LIVE"
    REBUILDING = "REBUILDING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


class ProjectionRunner:
    def __init__(
        self,
        events: EventStore,
        views: ViewStore,
        projection: Projection,
        *,
        generation: Generation | None = None,
        rebuilding: bool = False,
        status_interval: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
        live_pace: float = LIVE_PACE,
    ) -> None:
        """Writes into `generation` (generation 0 of the projection's version unless
        given); `rebuilding` reports REBUILDING rather than CATCHING_UP / LIVE until
        `promote()`: a generation built beside the live one, not yet read. `live_pace`:
        see LIVE_PACE."""
        self.generation = generation or projection.first_generation
        self.name = self.generation.name
        self.rebuilding = rebuilding
        self._events = events
        self._views = GenerationViews(views, self.generation)
        self._projection = projection
        self._status_interval = status_interval
        self._clock = clock
        self._live_pace = live_pace
        self.position = 0
        self.applied = 0
        self.state = State.REBUILDING if rebuilding else State.CATCHING_UP
        self.head = 0
        self.parked = 0
        self.last_error = ""
        self.lag_seconds = 0.0
        self._oldest_in_hand: datetime | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._poke = asyncio.Event()
        self._stopping = False

    async def run(self, *, max_delay: float = 10.0) -> None:
        """Run until cancelled, riding out store outages by resuming from the checkpoint.

        Cancelled, it publishes STOPPED; on an error it cannot ride out, FAILED (with
        the error) and raises it."""
        publisher = asyncio.create_task(self._publish_periodically(), name="projection-status")
        final = State.STOPPED
        try:
            await self._run(max_delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            final = State.FAILED
            self.last_error = describe(exc)
            log.error(
                "projection failed",
                extra={"projection": self.name, "error": self.last_error},
            )
            raise
        finally:
            self._stopping = True
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            self.state = final
            with contextlib.suppress(Exception):  # never hide why it stopped
                await self.publish_status(refresh=False)

    async def _run(self, max_delay: float) -> None:
        backoff = Backoff(cap=max_delay)
        while True:
            applied_before = self.applied
            try:
                await self._follow()
            except Unavailable as exc:
                if self.applied != applied_before:
                    backoff.reset()
                self.last_error = exc.message
                log.warning(
                    f"store unavailable, resuming from the checkpoint in {backoff.delay:.1f}s",
                    extra={"projection": self.name, "error": exc.message},
                )
                await asyncio.sleep(backoff.take())

    async def _follow(self) -> None:
        """Apply batches from the stored checkpoint on; a cancellation never splits a batch.

        Three stages overlap: a task reads batches ahead (at most READ_AHEAD of them),
        this loop turns them into upserts, and the view store writes the previous
        ones in its own thread. One write is in flight at a time, so writes land in log
        order, each with its checkpoint. Batches already read are joined into one write
        of up to WRITE_EVENTS events: catching up, that means fewer and larger
        transactions; live, each batch is written as it comes, and a write lands
        before the loop waits for more. Memory is bounded by the read-ahead and two
        writes, however long the log."""
        name = self.name
        self.position = await self._views.checkpoint(name)
        self.parked = len(await parked_events(self._views, name))
        log.info("projection starting", extra={"projection": name, "position": self.position})
        self._poke.set()
        subscription = self._events.subscribe(
            self.position, stream_prefixes=self._projection.stream_prefixes
        )
        ahead: asyncio.Queue[SubscriptionBatch | Exception] = asyncio.Queue(READ_AHEAD)
        reader = asyncio.create_task(
            _read_ahead(paced(subscription, self._live_pace), ahead),
            name="projection-read",
        )
        in_flight: _Write | None = None
        try:
            while True:
                if in_flight is not None and ahead.empty():
                    landing, in_flight = in_flight, None
                    await self._land(landing)
                batches = [_batch(await ahead.get())]
                events = len(batches[0].events)
                while events < WRITE_EVENTS and not ahead.empty():
                    # On a read error, what was read but not written is read again on resume.
                    batches.append(_batch(ahead.get_nowait()))
                    events += len(batches[-1].events)
                write = self._build(name, batches)
                if in_flight is not None:
                    landing, in_flight = in_flight, None
                    await self._land(landing)
                write.future = asyncio.ensure_future(
                    self._views.apply(write.upserts, Checkpoint(name, write.position))
                )
                in_flight = write
                self._oldest_in_hand = write.oldest
        finally:
            reader.cancel()
            if in_flight is not None:  # a write in hand lands before this returns or raises
                await self._land(in_flight)
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _build(self, name: str, batches: list[SubscriptionBatch]) -> _Write:
        """The upserts of these batches, parking the events that cannot be applied."""
        write = _Write(position=batches[-1].position)
        for batch in batches:
            write.events += len(batch.events)
            for recorded in batch.events:
                if write.oldest is None:
                    write.oldest = recorded.recorded_at
                try:
                    write.upserts.extend(self._projection.upserts_for(recorded))
                except Exception as exc:  # parked, reported, and skipped
                    error = describe(exc)
                    write.upserts.append(park(name, recorded, error, self._clock()))
                    write.parked.append((recorded, error))
        return write

    async def _land(self, write: _Write) -> None:
        """Wait for `write`; cancelled meanwhile, let it land with its checkpoint, then stop."""
        assert write.future is not None
        try:
            await asyncio.shield(write.future)
        except asyncio.CancelledError:
            await write.future
            self._applied(write.position, write.events, write.parked)
            raise
        self._applied(write.position, write.events, write.parked)
        log.debug(
            "batch applied",
            extra={
                "projection": self.name,
                "events": write.events,
                "position": write.position,
                "ms": round((time.perf_counter() - write.started) * 1000, 2),
            },
        )

    def _applied(self, position: int, count: int, parked: list[tuple[RecordedEvent, str]]) -> None:
        self.position = position
        self.applied += count
        self._oldest_in_hand = None
        for recorded, error in parked:
            self.parked += 1
            self.last_error = (
                f"event at position {recorded.position} ({recorded.type} in {recorded.stream})"
                f" parked: {error}"
            )
            log.error(
                "event parked",
                extra={
                    "projection": self.name,
                    "position": recorded.position,
                    "stream": recorded.stream,
                    "version": recorded.version,
                    "type": recorded.type,
                    "event_id": str(recorded.event_id),
                    "error": error,
                },
            )
        if parked or (self.state == State.CATCHING_UP and position >= self.head):
            self._poke.set()  # publish now; otherwise the next tick will

    def promote(self) -> None:
        """The generation this runner builds is now the one readers use."""
        self.rebuilding = False
        if self.state == State.REBUILDING:
            self.state = State.CATCHING_UP
        self._poke.set()

    async def _publish_periodically(self) -> None:
        # asyncio.timeout rather than wait_for: on Python 3.11, wait_for can swallow a
        # cancellation that arrives as the wait ends, and this task would never stop.
        while not self._stopping:
            await self.publish_status()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._status_interval):
                    await self._poke.wait()
            self._poke.clear()

    async def publish_status(self, *, refresh: bool = True) -> None:
        """Refresh the head of the log and the parked count, then save the status.

        Never raises for an unavailable store (the next publication catches up)."""
        name = self.name
        try:
            if refresh:
                self.head = await self._events.head_position(
                    stream_prefixes=self._projection.stream_prefixes
                )
                self.parked = len(await parked_events(self._views, name))
            if self.state in (State.CATCHING_UP, State.LIVE):
                self.state = State.LIVE if self.position >= self.head else State.CATCHING_UP
            await self._views.save_status(name, self.status())
        except Unavailable as exc:
            log.debug("status not published", extra={"projection": name, "error": exc.message})

    def _rate(self) -> float:
        now = time.monotonic()
        self._samples.append((now, self.applied))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        (then, before), (_, after) = self._samples[0], self._samples[-1]
        return (after - before) / (now - then) if now > then else 0.0

    def status(self) -> dict[str, StatusValue]:
        """The status record as published (the view store's fields)."""
        now = self._clock()
        if self.state == State.LIVE:
            self.lag_seconds = 0.0
        elif self._oldest_in_hand is not None:
            self.lag_seconds = max(
                0.0, (now - self._oldest_in_hand.astimezone(UTC)).total_seconds()
            )
        return {
            "version": self.generation.version,
            "applied_events": self.applied,
            "checkpoint_position": self.position,
            "head_position": self.head,
            "lag_events": max(0, self.head - self.position),
            "lag_seconds": self.lag_seconds,
            "events_per_second": self._rate(),
            "state": self.state.value,
            "last_error": self.last_error,
            "parked_events": self.parked,
            "updated_at": now.isoformat(),
        }


READ_AHEAD = 2
"""Subscription batches read ahead of the one being applied."""
WRITE_EVENTS = 3000
"""At most this many events per view-store write when batches already read are joined."""


@dataclass(slots=True)
class _Write:
    """One view-store write: the upserts of one or more batches and where they end."""

    position: int
    events: int = 0
    upserts: list[Upsert] = field(default_factory=list)
    parked: list[tuple[RecordedEvent, str]] = field(default_factory=list)
    oldest: datetime | None = None
    started: float = field(default_factory=time.perf_counter)
    future: asyncio.Future[None] | None = None


async def _read_ahead(
    subscription: AsyncIterator[SubscriptionBatch],
    ahead: asyncio.Queue[SubscriptionBatch | Exception],
) -> None:
    """Feed the subscription's batches into `ahead`, then its error if it fails.

    Cancelled (or failed), it closes the subscription there and then, even when that
    waits at a `yield`, rather than leaving its connection to the garbage collector."""
    try:
        async for batch in subscription:
            await ahead.put(batch)
    except Exception as exc:
        await ahead.put(exc)
    finally:
        if isinstance(subscription, AsyncGenerator):
            await subscription.aclose()


def _batch(item: SubscriptionBatch | Exception) -> SubscriptionBatch:
    if isinstance(item, Exception):
        raise item
    return item
