"""In-process servers for the gRPC tests: the real servicers behind the real error
mapping interceptor, real SQLite stores in tmp_path, and a ProjectionRunner task
playing the projector, all on real loopback sockets reached through the real stubs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from command_server.app import DESCRIPTOR as COMMAND_SERVICE
from command_server.servicer import AccountCommandServicer
from ledger.application.clock import Clock, utc_now
from ledger.application.command_handler import CommandHandler
from ledger.banking.views import codec, projection
from ledger.consistency import CheckpointFollower
from ledger.domain import accounts
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.grpc.server import Service
from ledger.projection_runner import ProjectionRunner
from ledger.v1 import account_command_service_pb2_grpc, account_query_service_pb2_grpc
from ledger.views.port import ViewStore
from ledger.views.sqlite import SqliteViewStore
from query_server.app import DESCRIPTOR as QUERY_SERVICE
from query_server.servicer import AccountQueryServicer
from tests.support import LedgerClient, connect


@dataclass
class InProcessLedger:
    """Command side, query side and projector of one ledger, in this event loop.

    The projector gets its own event store connection, as the real process has; it
    can be stopped and started to hold the views back on purpose.
    """

    root: Path
    max_wait: float = 5.0
    clock: Clock = utc_now
    wrap_views: Callable[[ViewStore], ViewStore] = lambda views: views
    views_version: int = projection.version
    command_target: str = ""
    query_target: str = ""
    _servers: list[grpc.aio.Server] = field(default_factory=list)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _projector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        events = SqliteEventStore(self.root / "events.sqlite3")
        views = SqliteViewStore(self.root / "views.sqlite3")
        await events.open()
        self._closers.append(events.close)
        await views.open(projection.collections)
        self._closers.append(views.close)

        self.command_target = await self._command_server(events)
        read_views = self.wrap_views(views)
        follower = CheckpointFollower(lambda: read_views.checkpoint(projection.checkpoint_name))
        queries = grpc.aio.server()
        Service.of(
            AccountQueryServicer(
                read_views,
                follower,
                max_wait=self.max_wait,
                views_version=lambda: self.views_version,
            ),
            account_query_service_pb2_grpc.add_AccountQueryServiceServicer_to_server,
            QUERY_SERVICE,
        ).register(queries)
        self.query_target = f"127.0.0.1:{queries.add_insecure_port('127.0.0.1:0')}"
        await queries.start()
        self._servers.append(queries)
        await self.start_projector()

    async def _command_server(self, events: SqliteEventStore) -> str:
        server = grpc.aio.server()
        Service.of(
            AccountCommandServicer(CommandHandler(events, accounts.accounts, codec), self.clock),
            account_command_service_pb2_grpc.add_AccountCommandServiceServicer_to_server,
            COMMAND_SERVICE,
        ).register(server)
        target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        self._servers.append(server)
        return target

    async def add_command_server(self) -> str:
        """Another command server with its own event store connection and cache, as a
        second command_server process on the same event log would have."""
        events = SqliteEventStore(self.root / "events.sqlite3")
        await events.open()
        self._closers.append(events.close)
        return await self._command_server(events)

    async def start_projector(self) -> None:
        assert self._projector is None, "the projector is already running"
        events = SqliteEventStore(self.root / "events.sqlite3")
        views = SqliteViewStore(self.root / "views.sqlite3")
        await events.open()
        await views.open(projection.collections)
        runner = ProjectionRunner(events, views, projection)

        async def run() -> None:
            try:
                await runner.run()
            finally:
                await events.close()
                await views.close()

        self._projector = asyncio.create_task(run(), name="test-projector")

    async def stop_projector(self) -> None:
        task, self._projector = self._projector, None
        assert task is not None, "the projector is not running"
        if task.done():
            task.result()  # a crashed projector fails the test here
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        if self._projector is not None:
            await self.stop_projector()
        for server in self._servers:
            await server.stop(None)
        for close in reversed(self._closers):
            await close()


LedgerFactory = Callable[..., Awaitable[InProcessLedger]]


@pytest.fixture
async def make_ledger(tmp_path: Path) -> AsyncIterator[LedgerFactory]:
    """Start an in-process ledger with options (max_wait, clock, wrap_views, views_version)."""
    started: list[InProcessLedger] = []

    async def make(**options: object) -> InProcessLedger:
        root = tmp_path / f"ledger-{len(started)}"
        root.mkdir()
        ledger = InProcessLedger(root, **options)  # type: ignore[arg-type]
        started.append(ledger)
        await ledger.start()
        return ledger

    yield make
    for ledger in reversed(started):
        await ledger.close()


@pytest.fixture
async def ledger(make_ledger: LedgerFactory) -> InProcessLedger:
    return await make_ledger()


@pytest.fixture
async def client(ledger: InProcessLedger) -> AsyncIterator[LedgerClient]:
    async with connect(ledger.command_target, ledger.query_target) as connected:
        yield connected
