"""A stand-in for an EventStoreDB / KurrentDB node: its gRPC streams protocol, in memory.

Enough of the server for kurrentdbclient to work unchanged: Streams.Append and
Streams.BatchAppend, Streams.Read (a stream or $all, forwards or backwards, filtered or
not) including catch-up subscriptions, and Gossip.Read for `+discover` URIs.

Semantics follow the server's source, not a guess:
- appends check the expected revision (no_stream, any, stream_exists, exact) and
  deduplicate by event id *per stream* the way IndexWriter.CheckCommit does: the same
  ids at the same expected revision (or ids already in the stream, for any /
  stream_exists) succeed without writing and return the original last revision and
  position; a partial match is a wrong expected version; an exact expected revision
  equal to the current one always writes, even ids the stream already holds;
- positions are log offsets: each record takes some bytes, so they strictly increase
  but are not consecutive, and reading or subscribing from an offset that is not a
  record boundary fails with InvalidPosition, as KurrentDB does;
- $all starts with system events ($-prefixed streams), as on a fresh node;
- a subscription sends its confirmation first; one to $all from position P starts
  after P; filtered ones send a checkpoint every window x multiplier considered
  events and when they catch up, then CaughtUp.

`StandIn(port).start()` serves in the running event loop; the log survives stop() and
start() on the same instance, so tests can take the "server" down and bring it back.
As a process: `python -m tests.standins.kurrentdb_server --port N` prints
`listening on HOST:PORT` once ready and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from kurrentdbclient.protos.google.rpc import code_pb2
from kurrentdbclient.protos.v1 import (
    gossip_pb2,
    gossip_pb2_grpc,
    shared_pb2,
    status_pb2,
    streams_pb2,
    streams_pb2_grpc,
)

ANY = -2
NO_STREAM = -1
STREAM_EXISTS = -4
FIRST_POSITION = 128
RECORD_OVERHEAD = 96
DEFAULT_WINDOW = 32
INVALID_POSITION = "Unexpected FilteredReadAllResult: InvalidPosition"
TOO_SLOW = "Consumer too slow to handle event while live. Client resubscription required."

Context = grpc.aio.ServicerContext[Any, Any]
Options = streams_pb2.ReadReq.Options
ReadResp = streams_pb2.ReadResp


@dataclass(frozen=True)
class Record:
    event_id: str
    stream: str
    revision: int
    position: int
    type: str
    content_type: str
    data: bytes
    metadata: bytes
    created: int  # .NET ticks (100 ns) since the Unix epoch, as the server stores it


@dataclass(frozen=True)
class Proposed:
    event_id: str
    type: str
    content_type: str
    data: bytes
    metadata: bytes


@dataclass(frozen=True)
class Written:
    revision: int
    position: int


@dataclass(frozen=True)
class Conflict:
    current: int  # NO_STREAM if the stream has no events


class EventLog:
    """The transaction log and its per-stream index; appends are synchronous, so atomic."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.positions: list[int] = []
        self.streams: dict[str, list[Record]] = {}
        self.end = FIRST_POSITION
        self._by_id: dict[tuple[str, str], Record] = {}
        self.listeners: set[asyncio.Event] = set()

    def is_boundary(self, position: int) -> bool:
        if position in (0, self.end):
            return True
        index = bisect.bisect_left(self.positions, position)
        return index < len(self.positions) and self.positions[index] == position

    def append(self, stream: str, expected: int, events: Sequence[Proposed]) -> Written | Conflict:
        records = self.streams.get(stream, [])
        current = len(records) - 1
        if expected == STREAM_EXISTS and current < 0:
            return Conflict(current)
        if expected in (ANY, STREAM_EXISTS):
            found = [self._by_id.get((stream, e.event_id)) for e in events]
            if found and found[0] is not None:
                last = found[-1]
                if any(f is None for f in found) or last is None:
                    return Conflict(current)  # corrupted idempotency
                return Written(last.revision, last.position)
        elif expected < current:
            revision = expected
            for proposed in events:
                revision += 1
                if revision > current or records[revision].event_id != proposed.event_id:
                    return Conflict(current)
            if revision == expected:
                return Conflict(current)
            return Written(revision, records[revision].position)
        elif expected > current:
            return Conflict(current)
        if not events:
            return Written(current, 0)
        created = time.time_ns() // 100
        stored = self.streams.setdefault(stream, [])
        for proposed in events:
            self._write(stored, stream, proposed, created)
        for listener in self.listeners:
            listener.set()
        return Written(stored[-1].revision, stored[-1].position)

    def _write(self, stored: list[Record], stream: str, e: Proposed, created: int) -> None:
        record = Record(
            event_id=e.event_id,
            stream=stream,
            revision=len(stored),
            position=self.end,
            type=e.type,
            content_type=e.content_type,
            data=e.data,
            metadata=e.metadata,
            created=created,
        )
        stored.append(record)
        self.records.append(record)
        self.positions.append(record.position)
        self._by_id.setdefault((stream, e.event_id), record)
        size = RECORD_OVERHEAD + len(stream) + len(e.type) + len(e.data) + len(e.metadata)
        self.end += size

    def seed_system_events(self) -> None:
        seeds = (
            ("$settings", "$settings"),
            ("$users", "$User"),
            ("$stats-node", "$statsCollected"),
        )
        for stream, type_ in seeds:
            data = b'{"seeded":true}'
            self.append(
                stream, ANY, [Proposed(str(uuid.uuid4()), type_, "application/json", data, b"")]
            )


@dataclass
class _Filter:
    on_stream: bool
    regex: re.Pattern[str] | None
    prefixes: tuple[str, ...]
    interval: int

    def allows(self, record: Record) -> bool:
        subject = record.stream if self.on_stream else record.type
        if self.regex is not None and not self.regex.search(subject):
            return False
        return not self.prefixes or subject.startswith(self.prefixes)


def _filter_of(options: Options) -> _Filter | None:
    if options.WhichOneof("filter_option") != "filter":
        return None
    f = options.filter
    on_stream = f.WhichOneof("filter") == "stream_identifier"
    expression = f.stream_identifier if on_stream else f.event_type
    window = f.max if f.WhichOneof("window") == "max" and f.max > 0 else DEFAULT_WINDOW
    regex = re.compile(expression.regex) if expression.regex else None
    interval = window * max(f.checkpointIntervalMultiplier, 1)
    return _Filter(on_stream, regex, tuple(expression.prefix), interval)


def _read_event(record: Record) -> ReadResp:
    metadata = {
        "type": record.type,
        "content-type": record.content_type,
        "created": str(record.created),
    }
    event = ReadResp.ReadEvent.RecordedEvent(
        id=shared_pb2.UUID(string=record.event_id),
        stream_identifier=shared_pb2.StreamIdentifier(stream_name=record.stream.encode()),
        stream_revision=record.revision,
        prepare_position=record.position,
        commit_position=record.position,
        metadata=metadata,
        custom_metadata=record.metadata,
        data=record.data,
    )
    return ReadResp(event=ReadResp.ReadEvent(event=event, commit_position=record.position))


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _checkpoint(position: int) -> ReadResp:
    return ReadResp(
        checkpoint=ReadResp.Checkpoint(
            commit_position=position, prepare_position=position, timestamp=_now()
        )
    )


def _proposed(messages: Iterable[Any]) -> list[Proposed]:
    return [
        Proposed(
            m.id.string,
            m.metadata["type"],
            m.metadata.get("content-type", "application/octet-stream"),
            m.data,
            m.custom_metadata,
        )
        for m in messages
    ]


def _expected(options: Any, oneof: str, exact: str) -> int:
    """The expected revision of an append's options: >= 0, or NO_STREAM, ANY, STREAM_EXISTS."""
    which = options.WhichOneof(oneof)
    if which == exact:
        return int(getattr(options, exact))
    return {"no_stream": NO_STREAM, "any": ANY, "stream_exists": STREAM_EXISTS}[which]


class StreamsService(streams_pb2_grpc.StreamsServicer):
    def __init__(self, log: EventLog, drops: set[asyncio.Event]) -> None:
        self._log = log
        self._drops = drops
        self.end_of_log_checkpoints = False

    async def BatchAppend(
        self, request_iterator: AsyncIterator[streams_pb2.BatchAppendReq], context: Context
    ) -> AsyncIterator[streams_pb2.BatchAppendResp]:
        pending: dict[str, tuple[streams_pb2.BatchAppendReq.Options, list[Proposed]]] = {}
        async for request in request_iterator:
            key = request.correlation_id.string
            if request.HasField("options"):
                pending[key] = (request.options, [])
            if key not in pending:
                continue
            pending[key][1].extend(_proposed(request.proposed_messages))
            if request.is_final:
                options, events = pending.pop(key)
                yield self._batch_append(request.correlation_id, options, events)

    def _batch_append(
        self,
        correlation_id: shared_pb2.UUID,
        options: streams_pb2.BatchAppendReq.Options,
        events: list[Proposed],
    ) -> streams_pb2.BatchAppendResp:
        stream = options.stream_identifier.stream_name.decode()
        expected = _expected(options, "expected_stream_position", "stream_position")
        outcome = self._log.append(stream, expected, events)
        response = streams_pb2.BatchAppendResp(
            correlation_id=correlation_id, stream_identifier=options.stream_identifier
        )
        if isinstance(outcome, Written):
            response.success.current_revision = outcome.revision
            response.success.position.commit_position = outcome.position
            response.success.position.prepare_position = outcome.position
            return response
        wrong = shared_pb2.WrongExpectedVersion()
        if outcome.current < 0:
            wrong.current_no_stream.SetInParent()
        else:
            wrong.current_stream_revision = outcome.current
        if expected >= 0:
            wrong.expected_stream_position = expected
        else:
            {ANY: wrong.expected_any, NO_STREAM: wrong.expected_no_stream}.get(
                expected, wrong.expected_stream_exists
            ).SetInParent()
        details = any_pb2.Any()
        details.Pack(wrong)
        response.error.CopyFrom(
            status_pb2.Status(
                code=code_pb2.FAILED_PRECONDITION,
                message="Wrong expected version.",
                details=details,
            )
        )
        return response

    async def Append(
        self, request_iterator: AsyncIterator[streams_pb2.AppendReq], context: Context
    ) -> streams_pb2.AppendResp:
        options: streams_pb2.AppendReq.Options | None = None
        messages = []
        async for request in request_iterator:
            if request.WhichOneof("content") == "options":
                options = request.options
            else:
                messages.append(request.proposed_message)
        if options is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "append without options")
        expected = _expected(options, "expected_stream_revision", "revision")
        outcome = self._log.append(
            options.stream_identifier.stream_name.decode(), expected, _proposed(messages)
        )
        response = streams_pb2.AppendResp()
        if isinstance(outcome, Written):
            response.success.current_revision = outcome.revision
            response.success.position.commit_position = outcome.position
            response.success.position.prepare_position = outcome.position
        elif outcome.current < 0:
            response.wrong_expected_version.current_no_stream.SetInParent()
        else:
            response.wrong_expected_version.current_revision = outcome.current
        return response

    async def Read(self, request: streams_pb2.ReadReq, context: Context) -> AsyncIterator[ReadResp]:
        options = request.options
        subscribe = options.WhichOneof("count_option") == "subscription"
        on_all = options.WhichOneof("stream_option") == "all"
        from_position = on_all and options.all.WhichOneof("all_option") == "position"
        if from_position and not self._log.is_boundary(options.all.position.commit_position):
            await context.abort(grpc.StatusCode.UNKNOWN, INVALID_POSITION)
        if not subscribe:
            for response in self._read_all(options) if on_all else self._read_stream(options):
                yield response
            return
        drop = asyncio.Event()
        self._drops.add(drop)
        try:
            subscription = self._all_subscription if on_all else self._stream_subscription
            async for response in subscription(options, drop):
                yield response
            await context.abort(grpc.StatusCode.ABORTED, TOO_SLOW)
        finally:
            self._drops.discard(drop)

    def _read_stream(self, options: Options) -> Iterator[ReadResp]:
        identifier = options.stream.stream_identifier
        records = self._log.streams.get(identifier.stream_name.decode())
        if not records:
            yield ReadResp(stream_not_found=ReadResp.StreamNotFound(stream_identifier=identifier))
            return
        which = options.stream.WhichOneof("revision_option")
        backwards = options.read_direction == Options.Backwards
        last = len(records) - 1
        start = {"start": 0, "end": last}.get(which or "", options.stream.revision)
        chosen = reversed(records[: start + 1]) if backwards else iter(records[start:])
        for _, record in zip(range(options.count), chosen, strict=False):
            yield _read_event(record)

    def _read_all(self, options: Options) -> Iterator[ReadResp]:
        which = options.all.WhichOneof("all_option")
        position = {"start": 0, "end": self._log.end}.get(
            which or "", options.all.position.commit_position
        )
        first_at_or_after = bisect.bisect_left(self._log.positions, position)
        records = self._log.records
        if options.read_direction == Options.Backwards:
            chosen: Iterator[Record] = reversed(records[:first_at_or_after])
        else:
            chosen = iter(records[first_at_or_after:])
        filter_ = _filter_of(options)
        allowed = (r for r in chosen if filter_ is None or filter_.allows(r))
        for _, record in zip(range(options.count), allowed, strict=False):
            yield _read_event(record)

    async def _stream_subscription(
        self, options: Options, drop: asyncio.Event
    ) -> AsyncIterator[ReadResp]:
        yield _confirmation()
        name = options.stream.stream_identifier.stream_name.decode()
        which = options.stream.WhichOneof("revision_option")
        records = self._log.streams.get(name, [])
        following = {"start": 0, "end": len(records)}.get(which or "", options.stream.revision + 1)
        caught_up = False
        async for _ in self._wake_ups(drop):
            records = self._log.streams.get(name, [])
            while following < len(records):
                yield _read_event(records[following])
                following += 1
            if not caught_up:
                caught_up = True
                revision = following - 1
                yield ReadResp(
                    caught_up=ReadResp.CaughtUp(timestamp=_now(), stream_revision=revision)
                )

    async def _all_subscription(
        self, options: Options, drop: asyncio.Event
    ) -> AsyncIterator[ReadResp]:
        yield _confirmation()
        log = self._log
        which = options.all.WhichOneof("all_option")
        filter_ = _filter_of(options)
        if which == "position":
            after: int | None = options.all.position.commit_position or None
            following = bisect.bisect_right(log.positions, after or 0)
        else:
            following = 0 if which == "start" else len(log.records)
            after = log.records[following - 1].position if following else None
        considered = 0
        checkpointed = 0  # the server never repeats a checkpoint, nor goes back
        caught_up = False
        async for _ in self._wake_ups(drop):
            while following < len(log.records):
                record = log.records[following]
                following += 1
                considered += 1
                after = record.position
                if filter_ is None or filter_.allows(record):
                    yield _read_event(record)
                if filter_ is not None and considered >= filter_.interval:
                    considered = 0
                    checkpointed = record.position
                    yield _checkpoint(record.position)
            if not caught_up:
                caught_up = True
                at = log.end if self.end_of_log_checkpoints else after
                if filter_ is not None and at is not None and at > checkpointed:
                    yield _checkpoint(at)
                here = ReadResp.Position(commit_position=after or 0, prepare_position=after or 0)
                yield ReadResp(caught_up=ReadResp.CaughtUp(timestamp=_now(), position=here))

    async def _wake_ups(self, drop: asyncio.Event) -> AsyncIterator[None]:
        """Yields now and after every append, until `drop` is set (then ends)."""
        wake = asyncio.Event()
        self._log.listeners.add(wake)
        try:
            while not drop.is_set():
                wake.clear()
                yield None
                if drop.is_set():
                    return
                waiting = asyncio.ensure_future(wake.wait())
                dropping = asyncio.ensure_future(drop.wait())
                try:
                    await asyncio.wait({waiting, dropping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
                    dropping.cancel()
        finally:
            self._log.listeners.discard(wake)


def _confirmation() -> ReadResp:
    return ReadResp(
        confirmation=ReadResp.SubscriptionConfirmation(subscription_id=str(uuid.uuid4()))
    )


class GossipService(gossip_pb2_grpc.GossipServicer):
    def __init__(self, host: str, port: int, instance: str) -> None:
        self._member = gossip_pb2.MemberInfo(
            instance_id=shared_pb2.UUID(string=instance),
            time_stamp=time.time_ns() // 100,
            state=gossip_pb2.MemberInfo.VNodeState.Leader,
            is_alive=True,
            http_end_point=gossip_pb2.EndPoint(address=host, port=port),
        )

    async def Read(self, request: shared_pb2.Empty, context: Context) -> gossip_pb2.ClusterInfo:
        return gossip_pb2.ClusterInfo(members=[self._member])


@dataclass
class StandIn:
    """One node; `start()` binds (port 0: any free port) and returns the port."""

    port: int = 0
    host: str = "127.0.0.1"
    log: EventLog = field(default_factory=EventLog)
    end_of_log_checkpoints: bool = False
    """Emulate KurrentDB issue #4970: the caught-up checkpoint is the end of the log."""

    _server: grpc.aio.Server | None = None
    _drops: set[asyncio.Event] = field(default_factory=set)
    _instance: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        self.log.seed_system_events()

    @property
    def uri(self) -> str:
        return f"kurrentdb://{self.host}:{self.port}?tls=false"

    async def start(self) -> int:
        if self._server is not None:
            raise RuntimeError("the stand-in is already running")
        server = grpc.aio.server()
        streams = StreamsService(self.log, self._drops)
        streams.end_of_log_checkpoints = self.end_of_log_checkpoints
        streams_pb2_grpc.add_StreamsServicer_to_server(streams, server)  # type: ignore[no-untyped-call]
        bound = server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise OSError(f"cannot bind {self.host}:{self.port}")
        self.port = bound
        gossip = GossipService(self.host, bound, self._instance)
        gossip_pb2_grpc.add_GossipServicer_to_server(gossip, server)  # type: ignore[no-untyped-call]
        await server.start()
        self._server = server
        return bound

    async def stop(self) -> None:
        """Drop every connection at once, as a crashed node would; the log is kept."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)

    def drop_subscriptions(self) -> None:
        """End every live subscription as the server does a consumer that is too slow."""
        for drop in list(self._drops):
            drop.set()


async def _serve(host: str, port: int) -> None:
    stand_in = StandIn(port=port, host=host)
    bound = await stand_in.start()
    print(f"listening on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await stand_in.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2113, help="0 picks a free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
