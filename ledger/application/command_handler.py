"""Runs a command: load the stream, decide, append with optimistic concurrency.

Each stream's state is cached with the version it was folded to and caught up from
the log before every decision (a *verified* cache: another process's appends are
read, never assumed away), so the cost of a command does not grow with history.
Commands on one stream are serialised inside this process; across processes the
expected-version check settles races, re-deciding a bounded number of times.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from ledger.application.decider import Decider
from ledger.errors import ConcurrencyConflict, FieldViolation, InvalidArgument, WrongExpectedVersion
from ledger.eventstore.codec import EventCodec, EventMetadata
from ledger.eventstore.port import NO_STREAM, EventStore, RecordedEvent

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")

REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
WRONG_EXPECTED_VERSION = "WRONG_EXPECTED_VERSION"


@dataclass(frozen=True)
class _Request:
    fingerprint: str
    first_version: int
    last_version: int
    position: int


@dataclass
class _Loaded(Generic[S]):
    state: S
    version: int = NO_STREAM
    position: int = 0
    requests: dict[str, _Request] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome(Generic[E]):
    """The events a command produced (or produced the first time, for a retry)."""

    events: tuple[E, ...]
    version: int
    position: int
    replayed: bool = False


class CommandHandler(Generic[S, C, E]):
    def __init__(
        self,
        store: EventStore,
        decider: Decider[S, C, E],
        codec: EventCodec,
        *,
        max_attempts: int = 8,
        cache_size: int = 10_000,
    ) -> None:
        self._store = store
        self._decider = decider
        self._codec = codec
        self._max_attempts = max_attempts
        self._cache: OrderedDict[str, _Loaded[S]] = OrderedDict()
        self._cache_size = cache_size
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def store(self) -> EventStore:
        return self._store

    async def state_of(self, entity_id: str) -> tuple[S, int]:
        """Current state and version, read through the cache (for cross-aggregate checks)."""
        stream = self._decider.stream_for(entity_id)
        async with self._lock(stream):
            loaded = await self._load(stream)
            return loaded.state, loaded.version

    async def check(self, entity_id: str, command: C) -> tuple[E, ...]:
        """Decide on the current state without appending: a dry run that raises exactly
        what `handle` would raise now (for a step that must not start if a later one
        would be refused)."""
        stream = self._decider.stream_for(entity_id)
        async with self._lock(stream):
            loaded = await self._load(stream)
            return tuple(self._decider.decide(loaded.state, command))

    async def replayed(
        self, entity_id: str, *, request_id: str, fingerprint: str
    ) -> Outcome[E] | None:
        """The original outcome if `request_id` was already handled on this entity
        (InvalidArgument if it was for a different command); None if it was not."""
        if not request_id:
            return None
        stream = self._decider.stream_for(entity_id)
        async with self._lock(stream):
            previous = (await self._load(stream)).requests.get(request_id)
            if previous is None:
                return None
            return await self._replay(stream, request_id, previous, fingerprint)

    async def handle(
        self,
        entity_id: str,
        command: C,
        *,
        request_id: str,
        fingerprint: str,
        expected_version: int | None = None,
        correlation_id: str = "",
        causation_id: str = "",
    ) -> Outcome[E]:
        stream = self._decider.stream_for(entity_id)
        metadata = EventMetadata(
            request_id=request_id,
            fingerprint=fingerprint,
            correlation_id=correlation_id or request_id,
            causation_id=causation_id or request_id,
        )
        async with self._lock(stream):
            for attempt in range(self._max_attempts):
                loaded = await self._load(stream)
                previous = loaded.requests.get(request_id) if request_id else None
                if previous is not None:
                    return await self._replay(stream, request_id, previous, fingerprint)
                if expected_version is not None and expected_version != loaded.version:
                    raise ConcurrencyConflict(
                        f"{stream} is at version {loaded.version}, not {expected_version}",
                        reason=WRONG_EXPECTED_VERSION,
                    )
                events = tuple(self._decider.decide(loaded.state, command))
                if not events:
                    return Outcome((), loaded.version, loaded.position)
                new_events = self._codec.new_events(stream, events, metadata)
                try:
                    result = await self._store.append(stream, new_events, loaded.version)
                except WrongExpectedVersion:
                    self._cache.pop(stream, None)
                    # Full-jitter exponential backoff: racers spread out instead of
                    # colliding again in lock-step.
                    await asyncio.sleep(random.uniform(0, min(0.1, 0.005 * 2**attempt)))
                    continue
                if result.version != loaded.version + len(events):
                    # The store says these ids were already stored: our view was stale.
                    self._cache.pop(stream, None)
                    continue
                self._remember(stream, loaded, events, metadata, result.version, result.position)
                return Outcome(events, result.version, result.position)
        raise ConcurrencyConflict(
            f"{stream} kept changing; gave up after {self._max_attempts} tries"
        )

    def _lock(self, stream: str) -> asyncio.Lock:
        lock = self._locks.get(stream)
        if lock is None:
            if len(self._locks) > 4 * self._cache_size:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[stream] = asyncio.Lock()
        return lock

    async def _load(self, stream: str) -> _Loaded[S]:
        loaded = self._cache.get(stream)
        if loaded is None:
            loaded = _Loaded(self._decider.initial_state)
        recorded = await self._store.read_stream(stream, loaded.version + 1)
        if recorded:
            loaded = self._apply(loaded, recorded)
        self._cache[stream] = loaded
        self._cache.move_to_end(stream)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return loaded

    def _apply(self, loaded: _Loaded[S], recorded: list[RecordedEvent]) -> _Loaded[S]:
        state = loaded.state
        requests = loaded.requests  # in place, as in _remember
        for r in recorded:
            state = self._decider.evolve(state, self._codec.decode_recorded(r))  # type: ignore[arg-type]
            meta = EventMetadata.from_bytes(r.metadata)
            if meta.request_id:
                first = requests.get(meta.request_id)
                start = first.first_version if first else r.version
                requests[meta.request_id] = _Request(meta.fingerprint, start, r.version, r.position)
        return _Loaded(state, recorded[-1].version, recorded[-1].position, requests)

    def _remember(
        self,
        stream: str,
        loaded: _Loaded[S],
        events: tuple[E, ...],
        metadata: EventMetadata,
        version: int,
        position: int,
    ) -> None:
        first = version - len(events) + 1
        # Updated in place: the map holds one entry per past request, and copying it on
        # every command would make a command's cost grow with the stream's history.
        requests = loaded.requests
        if metadata.request_id:
            requests[metadata.request_id] = _Request(metadata.fingerprint, first, version, position)
        self._cache[stream] = replace(
            loaded,
            state=self._decider.fold(loaded.state, events),
            version=version,
            position=position,
            requests=requests,
        )

    async def _replay(
        self, stream: str, request_id: str, previous: _Request, fingerprint: str
    ) -> Outcome[E]:
        if previous.fingerprint != fingerprint:
            raise InvalidArgument(
                [FieldViolation("request_id", "was already used for a different command")],
                reason=REQUEST_ID_REUSED,
            )
        recorded = await self._store.read_stream(stream, previous.first_version)
        mine = [r for r in recorded if r.version <= previous.last_version]
        events = tuple(self._codec.decode_recorded(r) for r in mine)
        return Outcome(events, previous.last_version, previous.position, replayed=True)  # type: ignore[arg-type]
