"""Runs a command: decide on the cached state, append with optimistic concurrency.

The cache is *verified*, never trusted: each stream's state is cached with the version it
was folded to, and a command appends with that version as the expected version, so the
store's own check proves the decision was made on the current state (another process's
appends are read, never assumed away). A stale cache costs one refused append, a
catch-up read and a new decision, a bounded number of times. What no append checks (a
refusal by the domain, a decision with no events, a client's `expected_version` that
does not match) is only answered once a catch-up read shows the cache was current.
Commands on one stream are serialised inside this process, and batched: the commands
that queue up on a stream while its append commits are decided one after another on
the state each leaves, and appended together in one append (one commit), so a hot
stream is not limited to one commit per command. A batch holds only commands that
append events; a refusal, a decision with no events or a client's expected version is
decided alone, on a state the log has confirmed.

Cold streams: a stream not in the cache is loaded from its latest snapshot plus the
events after it (one read), so the cost of a command does not grow with its history. A
snapshot is written when a stream passes a multiple of `snapshot_every` versions (or a
cold load had to replay that many events). It is only a starting point: the log after
its version is always read, and an absent, undecodable or other-schema snapshot means a
replay.

Idempotency: a command's events have ids derived from (stream, request id, index), so
the first event of any request can be found by id. The cache remembers the requests it
folded; after a full replay that map is complete. After a snapshot (loaded, or written:
then the cache forgets the requests it covers, so a stream that stays cached does not
hold every request id of its history) it lacks the requests before the snapshot; those
are found in the store instead, by their first event's id
(`find_event`, an index lookup), at no cost on the common path: the store refuses an
append whose ids it holds anywhere (`unique_event_ids`), so a retry of an old request
shows up as a refused append, and only then, or before a refusal or an empty decision
is answered, is the id looked up. A retry of any earlier request thus returns the
original outcome across restarts, at a cost that does not grow with history. Keeping
every request id in the snapshot was rejected: the snapshot, and so a cold load, would
grow with history again. A store without such ids (KurrentDB dedupes only where a retry
lands, and has no index by id) gets no snapshots: a cold stream is replayed once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from ledger.application.decider import Decider
from ledger.errors import (
    ConcurrencyConflict,
    FieldViolation,
    InvalidArgument,
    LedgerError,
    WrongExpectedVersion,
)
from ledger.eventstore.codec import EventCodec, EventMetadata, event_id_for
from ledger.eventstore.port import NO_STREAM, EventStore, RecordedEvent, Snapshot

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")

REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
WRONG_EXPECTED_VERSION = "WRONG_EXPECTED_VERSION"
REQUEST_PAGE = 16
"""Events read at a time when collecting a looked-up request's events."""

log = logging.getLogger("ledger.command_handler")


class StateCodec(Protocol[S]):
    """Encodes a decider's state for a snapshot; `decode` raises ValueError if it cannot."""

    def encode(self, state: S) -> bytes: ...

    def decode(self, data: bytes) -> S: ...


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
    requests_from: int = 0
    """`requests` holds every request appended from this version on (0: all of them)."""

    def moved(self, state: S, version: int, position: int) -> _Loaded[S]:
        """The same stream (and request map) at a later state; built directly, as
        dataclasses.replace costs several microseconds on every command."""
        return _Loaded(state, version, position, self.requests, self.requests_from)

    @staticmethod
    def snapshotted(state: S, version: int, position: int) -> _Loaded[S]:
        """The stream as a snapshot at `version` leaves it: no request before it known."""
        return _Loaded(state, version, position, {}, version + 1)


@dataclass(eq=False)
class _Queued(Generic[C, E]):
    """A command waiting for its stream; `future` gets its outcome or its error."""

    command: C
    metadata: EventMetadata
    expected_version: int | None
    future: asyncio.Future[Outcome[E]]
    abandoned: bool = False
    """Its caller went away (cancelled) before it ran: it is not run at all."""


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
        snapshots: StateCodec[S] | None = None,
        snapshot_every: int = 100,
        max_attempts: int = 8,
        cache_size: int = 10_000,
    ) -> None:
        """`snapshots`: how to encode the state; None (or a store with no index by event
        id) means no snapshots, and a cold stream is replayed from the start."""
        self._store = store
        self._decider = decider
        self._codec = codec
        self._snapshots = snapshots if store.unique_event_ids else None
        self._snapshot_every = snapshot_every
        self._max_attempts = max_attempts
        self._cache: OrderedDict[str, _Loaded[S]] = OrderedDict()
        self._cache_size = cache_size
        self._locks: dict[str, asyncio.Lock] = {}
        self._queued: dict[str, list[_Queued[C, E]]] = {}

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
            loaded = await self._load(stream)
            previous = await self._previous(stream, loaded, request_id, look_up=True)
            if previous is None:
                return None
            return await self._replay(stream, previous, fingerprint)

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
        mine: _Queued[C, E] = _Queued(
            command, metadata, expected_version, asyncio.get_running_loop().create_future()
        )
        self._queued.setdefault(stream, []).append(mine)
        try:
            while not mine.future.done():
                async with self._lock(stream):
                    if mine.future.done():
                        break
                    # Everything queued meanwhile (mine included) runs now, in order.
                    batch = deque(self._queued.pop(stream, []))
                    try:
                        await self._run(stream, batch)
                    except asyncio.CancelledError:  # what did not run waits for its turn
                        left = [q for q in batch if not q.future.done()]
                        if rest := left + self._queued.get(stream, []):
                            self._queued[stream] = rest
                        raise
                    except Exception as exc:  # e.g. the store is down: all hear it
                        for queued in batch:
                            if not queued.future.done():
                                queued.future.set_exception(exc)
        except asyncio.CancelledError:
            mine.abandoned = True
            raise
        return mine.future.result()

    async def _run(self, stream: str, todo: deque[_Queued[C, E]]) -> None:
        """Settle every queued command, in order; batches those that append."""
        loaded, verified = await self._cached(stream)
        look_up = False  # ask the store about request ids, not only the cache
        attempt = 0
        while todo:
            head = todo[0]
            if head.abandoned:
                todo.popleft()
                continue
            if attempt >= self._max_attempts:
                head.future.set_exception(
                    ConcurrencyConflict(
                        f"{stream} kept changing; gave up after {self._max_attempts} tries"
                    )
                )
                todo.popleft()
                attempt = 0
                continue
            request_id = head.metadata.request_id
            previous = await self._previous(stream, loaded, request_id, look_up=look_up)
            if previous is not None:
                await self._settle(head, self._replay(stream, previous, head.metadata.fingerprint))
                todo.popleft()
                continue
            # Whether an answer no append checks still needs a read first.
            unsure = not verified or (not look_up and self._may_miss(loaded, request_id))
            try:
                if head.expected_version is not None and head.expected_version != loaded.version:
                    raise ConcurrencyConflict(
                        f"{stream} is at version {loaded.version}, not {head.expected_version}",
                        reason=WRONG_EXPECTED_VERSION,
                    )
                events = tuple(self._decider.decide(loaded.state, head.command))
            except LedgerError as refusal:
                if unsure:
                    loaded, verified, look_up = await self._catch_up(stream, loaded), True, True
                    continue
                head.future.set_exception(refusal)
                todo.popleft()
                attempt = 0
                continue
            if not events:
                if unsure:
                    loaded, verified, look_up = await self._catch_up(stream, loaded), True, True
                    continue
                head.future.set_result(Outcome((), loaded.version, loaded.position))
                todo.popleft()
                attempt = 0
                continue
            group = self._group(loaded, todo, events, look_up=look_up)
            new_events = [
                e
                for queued, decided, _ in group
                for e in self._codec.new_events(stream, decided, queued.metadata)
            ]
            try:
                result = await self._store.append(stream, new_events, loaded.version)
            except WrongExpectedVersion:
                if attempt:
                    # Racing another process: full-jitter exponential backoff spreads
                    # the racers out instead of colliding again in lock-step.
                    await asyncio.sleep(random.uniform(0, min(0.1, 0.005 * 2**attempt)))
                attempt += 1
                # A stale cache, or (unique ids) the retry of a request older than it.
                loaded, verified, look_up = await self._catch_up(stream, loaded), True, True
                continue
            if result.deduplicated or result.version != loaded.version + len(new_events):
                # These ids were stored already (by another process): the retry of a
                # request our stale cache did not know. Catching up finds it.
                attempt += 1
                loaded, verified = await self._catch_up(stream, loaded), True
                continue
            loaded = await self._settle_group(stream, loaded, group, result.position)
            for _ in group:
                todo.popleft()
            verified, attempt = True, 0

    def _group(
        self,
        loaded: _Loaded[S],
        todo: deque[_Queued[C, E]],
        events: tuple[E, ...],
        *,
        look_up: bool,
    ) -> list[tuple[_Queued[C, E], tuple[E, ...], S]]:
        """The head's events, then those of the commands after it, each decided on the
        state the ones before leave, while they append events and need nothing checked
        first (a retry, an expected version, a refusal: those wait for their turn); each
        with the state its events leave."""
        state = self._decider.fold(loaded.state, events)
        group = [(todo[0], events, state)]
        seen = {todo[0].metadata.request_id}
        for queued in list(todo)[1:]:
            request_id = queued.metadata.request_id
            if (
                queued.abandoned
                or queued.expected_version is not None
                or (request_id and (request_id in seen or request_id in loaded.requests))
                or (look_up and self._may_miss(loaded, request_id))
            ):
                break
            try:
                decided = tuple(self._decider.decide(state, queued.command))
            except LedgerError:
                break
            if not decided:
                break
            state = self._decider.fold(state, decided)
            group.append((queued, decided, state))
            seen.add(request_id)
        return group

    async def _settle_group(
        self,
        stream: str,
        loaded: _Loaded[S],
        group: list[tuple[_Queued[C, E], tuple[E, ...], S]],
        last_position: int,
    ) -> _Loaded[S]:
        """Answer each command of an appended group with its own version and position."""
        before = loaded.version
        positions = [last_position]
        if len(group) > 1:  # positions need not be consecutive: read them back
            count = sum(len(decided) for _, decided, _ in group)
            positions = [
                r.position for r in await self._store.read_stream(stream, before + 1, count)
            ]
        version = before
        for queued, decided, state in group:
            version += len(decided)
            position = positions[version - before - 1] if len(group) > 1 else last_position
            loaded = self._remember(
                stream, loaded, state, len(decided), queued.metadata, version, position
            )
            queued.future.set_result(Outcome(decided, version, position))
        return await self._snapshot_if_due(stream, before, loaded)

    @staticmethod
    async def _settle(queued: _Queued[C, E], answer: Awaitable[Outcome[E]]) -> None:
        try:
            queued.future.set_result(await answer)
        except LedgerError as exc:
            queued.future.set_exception(exc)

    def _lock(self, stream: str) -> asyncio.Lock:
        lock = self._locks.get(stream)
        if lock is None:
            if len(self._locks) > 4 * self._cache_size:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[stream] = asyncio.Lock()
        return lock

    async def _load(self, stream: str) -> _Loaded[S]:
        """The stream's state, verified current by a read."""
        loaded, verified = await self._cached(stream)
        return loaded if verified else await self._catch_up(stream, loaded)

    async def _cached(self, stream: str) -> tuple[_Loaded[S], bool]:
        """The cached state, unverified; or, if none, the state loaded now (verified)."""
        loaded = self._cache.get(stream)
        if loaded is not None:
            self._cache.move_to_end(stream)
            return loaded, False
        loaded = _Loaded(self._decider.initial_state)
        if self._snapshots is None:
            loaded = await self._catch_up(stream, loaded)
            return loaded, True
        snapshot, after = await self._store.read_latest(stream)
        restored = self._restore(stream, snapshot)
        if restored is not None:
            loaded = restored
        elif snapshot is not None:  # unusable: replay the whole stream
            after = await self._store.read_stream(stream)
        if after:
            loaded = self._apply(loaded, after)
        self._keep(stream, loaded)
        before = NO_STREAM if restored is None else restored.version
        return await self._snapshot_if_due(stream, before, loaded), True

    def _restore(self, stream: str, snapshot: Snapshot | None) -> _Loaded[S] | None:
        """The state in `snapshot`, None if there is none or it cannot be used."""
        if snapshot is None or self._snapshots is None:
            return None
        try:
            state = self._snapshots.decode(snapshot.data)
        except ValueError as exc:
            log.info("snapshot ignored", extra={"stream": stream, "error": str(exc)})
            return None
        return _Loaded.snapshotted(state, snapshot.version, snapshot.position)

    async def _catch_up(self, stream: str, loaded: _Loaded[S]) -> _Loaded[S]:
        recorded = await self._store.read_stream(stream, loaded.version + 1)
        if recorded:
            loaded = self._apply(loaded, recorded)
        self._keep(stream, loaded)
        return loaded

    def _keep(self, stream: str, loaded: _Loaded[S]) -> None:
        self._cache[stream] = loaded
        self._cache.move_to_end(stream)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

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
        return loaded.moved(state, recorded[-1].version, recorded[-1].position)

    def _remember(
        self,
        stream: str,
        loaded: _Loaded[S],
        state: S,
        count: int,
        metadata: EventMetadata,
        version: int,
        position: int,
    ) -> _Loaded[S]:
        """`loaded` after `count` events of the request in `metadata`, which left `state`
        (folded once, when the group was decided)."""
        first = version - count + 1
        # Updated in place: the map holds one entry per past request, and copying it on
        # every command would make a command's cost grow with the stream's history.
        if metadata.request_id:
            loaded.requests[metadata.request_id] = _Request(
                metadata.fingerprint, first, version, position
            )
        done = loaded.moved(state, version, position)
        self._keep(stream, done)
        return done

    async def _snapshot_if_due(self, stream: str, before: int, loaded: _Loaded[S]) -> _Loaded[S]:
        """Snapshot once the stream passed a multiple of `snapshot_every` since `before`.

        The cache then forgets the requests the snapshot covers, as if it had loaded the
        stream from it: a retry of one is found in the store, as after a restart. Else a
        stream that stays cached (a hot account) would keep every request id it was ever
        sent, and the server's memory would grow with its history."""
        every = self._snapshot_every
        if self._snapshots is None or (loaded.version + 1) // every <= (before + 1) // every:
            return loaded
        snapshot = Snapshot(loaded.version, loaded.position, self._snapshots.encode(loaded.state))
        try:
            await self._store.write_snapshot(stream, snapshot)
        except LedgerError as exc:  # only an optimisation: the command has succeeded
            log.warning("snapshot not written", extra={"stream": stream, "error": str(exc)})
            return loaded
        forgetful = _Loaded.snapshotted(loaded.state, loaded.version, loaded.position)
        self._keep(stream, forgetful)
        return forgetful

    @staticmethod
    def _may_miss(loaded: _Loaded[S], request_id: str) -> bool:
        """Whether the cache may not know this request (it was loaded from a snapshot)."""
        return bool(request_id) and loaded.requests_from > 0

    async def _previous(
        self, stream: str, loaded: _Loaded[S], request_id: str, *, look_up: bool
    ) -> _Request | None:
        """The request's earlier append on this stream, if any: from the cache, or, with
        `look_up`, from the store when the cache may not know it."""
        if not request_id:
            return None
        previous = loaded.requests.get(request_id)
        if previous is not None or not look_up or not self._may_miss(loaded, request_id):
            return previous
        first = await self._store.find_event(stream, event_id_for(stream, request_id, 0))
        if first is None:
            return None
        events = await self._events_of(stream, request_id, first)
        meta = EventMetadata.from_bytes(first.metadata)
        previous = _Request(
            meta.fingerprint, first.version, events[-1].version, events[-1].position
        )
        loaded.requests[request_id] = previous
        return previous

    async def _events_of(
        self, stream: str, request_id: str, first: RecordedEvent
    ) -> list[RecordedEvent]:
        """The events one request appended (contiguous: an append is atomic)."""
        mine = [first]
        while True:
            page = await self._store.read_stream(stream, mine[-1].version + 1, REQUEST_PAGE)
            for r in page:
                if r.event_id != event_id_for(stream, request_id, len(mine)):
                    return mine
                mine.append(r)
            if len(page) < REQUEST_PAGE:
                return mine

    async def _replay(self, stream: str, previous: _Request, fingerprint: str) -> Outcome[E]:
        if previous.fingerprint != fingerprint:
            raise InvalidArgument(
                [FieldViolation("request_id", "was already used for a different command")],
                reason=REQUEST_ID_REUSED,
            )
        count = previous.last_version - previous.first_version + 1
        mine = await self._store.read_stream(stream, previous.first_version, count)
        events = tuple(self._codec.decode_recorded(r) for r in mine)
        return Outcome(events, previous.last_version, previous.position, replayed=True)  # type: ignore[arg-type]
