"""WatchAccount and WatchTransfer: live streams fed by the one checkpoint follower.

In-process (the real servicer behind the real interceptor on loopback, a projector
task, SQLite stores), plus one end-to-end test on the real processes. Every stream is
checked against the unary queries: the transactions it carries against
ListTransactions, each account state against GetAccountAsOf at that version.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import pytest

from ledger.application.command_handler import CommandHandler
from ledger.banking.views import codec, projection
from ledger.consistency import SERVER_SHUTTING_DOWN, CheckpointFollower
from ledger.domain import accounts
from ledger.domain.accounts import CreditTransfer, RefundTransfer, SettleTransfer
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.grpc.server import Service
from ledger.v1 import account_command_service_pb2 as cmd
from ledger.v1 import account_pb2, account_query_service_pb2_grpc, transfer_pb2
from ledger.v1 import account_query_service_pb2 as qry
from ledger.views.sqlite import SqliteViewStore
from query_server import servicer
from query_server.app import DESCRIPTOR as QUERY_SERVICE
from query_server.servicer import AccountQueryServicer
from tests.grpc.conftest import InProcessLedger
from tests.support import (
    CALL_TIMEOUT,
    CHANNEL_OPTIONS,
    LedgerClient,
    connect,
    failure_of,
    new_id,
    new_request_id,
)
from tests.support.backends import BACKENDS
from tests.support.processes import QUERY_SERVER, Stack

# Guards against a hang, never a performance assertion.
GUARD = 60.0
WATCHERS = 200


@dataclass
class WatchedLedger(InProcessLedger):
    """The gRPC tests' in-process ledger, keeping hold of the query side's follower
    (whose checkpoint reads are recorded with the task that made them) and server."""

    follower: CheckpointFollower | None = None
    servicer: AccountQueryServicer | None = None
    query_server: grpc.aio.Server | None = None
    reads: list[str] = field(default_factory=list)

    async def _query_server(self, views: SqliteViewStore) -> None:
        async def read_position() -> int:
            task = asyncio.current_task()
            self.reads.append(task.get_name() if task else "")
            return await views.checkpoint(projection.checkpoint_name)

        # As the query server wires it for SQLite: woken by the projector's commits.
        self.follower = CheckpointFollower(read_position, changes=views.change_watcher)
        self.servicer = AccountQueryServicer(views, self.follower, max_wait=self.max_wait)
        server = grpc.aio.server()
        Service.of(
            self.servicer,
            account_query_service_pb2_grpc.add_AccountQueryServiceServicer_to_server,
            QUERY_SERVICE,
        ).register(server)
        self.query_target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        self._servers.append(server)
        self.query_server = server

    async def start(self) -> None:
        events = SqliteEventStore(self.root / "events.sqlite3")
        views = SqliteViewStore(self.root / "views.sqlite3")
        await events.open()
        self._closers.append(events.close)
        await views.open(projection.collections)
        self._closers.append(views.close)
        self.command_target = await self._command_server(events)
        await self._query_server(views)
        await self.start_projector()
        # The saga's steps, issued directly: the process manager does not run here.
        saga_events = SqliteEventStore(self.root / "events.sqlite3")
        await saga_events.open()
        self._closers.append(saga_events.close)
        self.saga = CommandHandler(saga_events, accounts.accounts, codec)

    async def step(self, account_id: str, command: accounts.Command) -> None:
        request_id = f"saga-{uuid.uuid4()}"
        await self.saga.handle(account_id, command, request_id=request_id, fingerprint=request_id)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[WatchedLedger]:
    started = WatchedLedger(tmp_path)
    await started.start()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def client(ledger: WatchedLedger) -> AsyncIterator[LedgerClient]:
    async with connect(ledger.command_target, ledger.query_target) as connected:
        yield connected


M = TypeVar("M", qry.WatchAccountResponse, qry.WatchTransferResponse)


class Watcher(Generic[M]):
    """Reads one stream in a task of its own, into `messages`, until it ends."""

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, M]) -> None:
        self.call: grpc.aio.UnaryStreamCall[Any, M] = call
        self.messages: list[M] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.done = False
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.call:
                self.messages.append(message)
                async with self._changed:
                    self._changed.notify_all()
        except grpc.aio.AioRpcError as error:
            self.error = error
        finally:
            self.done = True
            async with self._changed:
                self._changed.notify_all()

    async def until(self, predicate: Callable[[Watcher[M]], bool]) -> None:
        async with asyncio.timeout(GUARD), self._changed:
            await self._changed.wait_for(lambda: predicate(self) or self.done)
        assert predicate(self), (self.error, self.messages[-3:])

    async def reach(self, position: int) -> None:
        await self.until(lambda w: bool(w.messages) and w.messages[-1].position >= position)

    async def finish(self) -> None:
        async with asyncio.timeout(GUARD):
            await self._task

    async def cancel(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # how grpc.aio reports it
            await self.finish()


def watch(
    client: LedgerClient, account_id: str, from_position: int = 0
) -> Watcher[qry.WatchAccountResponse]:
    request = qry.WatchAccountRequest(account_id=account_id, from_position=from_position)
    return Watcher(client.queries.WatchAccount(request, timeout=GUARD * 2))


async def first_failure(call: grpc.aio.UnaryStreamCall[Any, Any]) -> grpc.StatusCode:
    async with asyncio.timeout(GUARD):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    return caught.value.code()


async def as_of(client: LedgerClient, account_id: str, version: int) -> account_pb2.Account:
    request = qry.GetAccountAsOfRequest(account_id=account_id, as_of_version=version)
    return (await client.queries.GetAccountAsOf(request, timeout=CALL_TIMEOUT)).account


async def freeze(client: LedgerClient, account_id: str) -> int:
    request = cmd.FreezeAccountRequest(
        request_id=new_request_id(), account_id=account_id, reason="checks"
    )
    return (await client.commands.FreezeAccount(request, timeout=CALL_TIMEOUT)).position


async def unfreeze(client: LedgerClient, account_id: str) -> int:
    request = cmd.UnfreezeAccountRequest(request_id=new_request_id(), account_id=account_id)
    return (await client.commands.UnfreezeAccount(request, timeout=CALL_TIMEOUT)).position


async def history(client: LedgerClient, account_id: str) -> list[int]:
    """Deposits, withdrawals, a freeze and an unfreeze; the positions of its events."""
    positions = []
    for n in range(1, 13):
        if n % 3:
            moved: Awaitable[cmd.DepositFundsResponse | cmd.WithdrawFundsResponse]
            moved = client.deposit(account_id, 100 * n, description=f"in {n}")
        else:
            moved = client.withdraw(account_id, 50 * n, description=f"out {n}")
        positions.append((await moved).position)
        if n == 6:
            positions.append(await freeze(client, account_id))
            positions.append(await unfreeze(client, account_id))
    return positions


async def check_against_queries(
    client: LedgerClient, account_id: str, messages: list[qry.WatchAccountResponse]
) -> None:
    """Each message is the account as of its version; the transactions match ListTransactions."""
    for message in messages:
        assert message.position == message.account.position
        assert message.account == await as_of(client, account_id, message.account.version)
        if message.HasField("transaction"):
            assert message.transaction.version == message.account.version
            assert message.transaction.balance_after_minor == message.account.balance_minor


async def test_changes_stream_in_order_complete_and_equal_to_the_queries(
    client: LedgerClient,
) -> None:
    account_id, opened = await client.open_shown()
    watcher = watch(client, account_id)
    await watcher.reach(opened.position)  # the current state first
    positions = await history(client, account_id)
    await watcher.reach(positions[-1])

    messages = watcher.messages
    assert [m.position for m in messages] == [opened.position, *positions]
    assert [m.account.version for m in messages] == list(range(len(positions) + 1))
    assert not messages[0].HasField("transaction")
    streamed = [m.transaction for m in messages if m.HasField("transaction")]
    assert streamed == await client.transactions(account_id, min_position=positions[-1])
    assert len(streamed) == 12
    statuses = [m.account.status for m in messages]
    assert statuses.count(account_pb2.ACCOUNT_STATUS_FROZEN) == 1
    assert messages[-1].account == await client.account(account_id)
    await check_against_queries(client, account_id, messages)
    assert not watcher.done, watcher.error  # still live
    await watcher.cancel()


@pytest.mark.parametrize("batch", [servicer.WATCH_BATCH, 2])
async def test_a_reconnect_with_the_last_position_resumes_exactly(
    client: LedgerClient, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(With batches of 2, finding where to resume steps down the history over pages.)"""
    monkeypatch.setattr(servicer, "WATCH_BATCH", batch)
    account_id = new_id()
    await client.open(new_id())  # so the account does not open at the first position
    opened = await client.open(account_id)
    positions = [opened.position, *await history(client, account_id)]
    await client.account(account_id, min_position=positions[-1])

    for seen in (opened.position - 1, positions[0], positions[5], positions[-2], positions[-1]):
        watcher = watch(client, account_id, from_position=seen)
        later = [p for p in positions if p > seen]
        if later:
            await watcher.reach(later[-1])
        deposited = await client.deposit(account_id, 1)
        positions.append(deposited.position)
        await watcher.reach(deposited.position)
        assert [m.position for m in watcher.messages] == [*later, deposited.position]
        await check_against_queries(client, account_id, watcher.messages)
        await watcher.cancel()


async def test_two_hundred_watchers_share_one_poll(
    ledger: WatchedLedger, client: LedgerClient
) -> None:
    follower = ledger.follower
    assert follower is not None
    account_id, opened = await client.open_shown()
    watchers = [watch(client, account_id) for _ in range(WATCHERS)]
    await asyncio.gather(*(w.reach(opened.position) for w in watchers))
    assert follower.watchers == WATCHERS
    assert follower.polling
    started, reads = follower.poll_tasks_started, len(ledger.reads)

    positions = [(await client.deposit(account_id, n)).position for n in range(1, 21)]
    await asyncio.gather(*(w.reach(positions[-1]) for w in watchers))

    expected = [opened.position, *positions]
    for w in watchers:
        assert [m.position for m in w.messages] == expected
    assert follower.poll_tasks_started == started  # the same single poll loop all along
    during = ledger.reads[reads:]
    assert during
    assert set(during) == {"checkpoint-follower"}  # no watcher read the checkpoint itself
    await asyncio.gather(*(w.cancel() for w in watchers))
    async with asyncio.timeout(GUARD):
        while follower.polling or follower.watchers:  # noqa: ASYNC110 (nothing to await)
            await asyncio.sleep(0.01)  # the poll stops with the last watcher


async def test_an_idle_watch_stream_waits_for_commits_instead_of_polling(
    ledger: WatchedLedger, client: LedgerClient
) -> None:
    account_id, opened = await client.open_shown()
    watcher = watch(client, account_id)
    await watcher.reach(opened.position)
    await asyncio.sleep(0.5)  # the projector's status saves aside, nothing commits
    reads = len(ledger.reads)
    await asyncio.sleep(1.0)
    assert len(ledger.reads) - reads < 50  # polling every 2 ms would read about 500 times
    deposited = await client.deposit(account_id, 7)
    await watcher.reach(deposited.position)  # and a commit still wakes it
    await watcher.cancel()


async def test_a_watcher_that_stops_reading_holds_back_no_one(
    ledger: WatchedLedger, client: LedgerClient
) -> None:
    account_id, opened = await client.open_shown()
    # A channel of its own without BDP probing, so its flow-control window stays small
    # and the server's writes to it block once it is full.
    options = [*CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(ledger.query_target, options=options) as channel:
        stalled = account_query_service_pb2_grpc.AccountQueryServiceStub(channel).WatchAccount(
            qry.WatchAccountRequest(account_id=account_id), timeout=GUARD * 2
        )
        first = await stalled.read()
        assert isinstance(first, qry.WatchAccountResponse)
        others = [watch(client, account_id) for _ in range(3)]
        await asyncio.gather(*(w.reach(opened.position) for w in others))

        big = "x" * 500  # ~200 messages of ~700 bytes: well over a 64 KiB window
        positions = []
        for n in range(200):
            deposited = await client.deposit(account_id, n + 1, description=big)
            positions.append(deposited.position)
        await asyncio.gather(*(w.reach(positions[-1]) for w in others))
        for w in others:
            assert [m.position for m in w.messages] == [opened.position, *positions]
        await client.account(account_id, min_position=positions[-1])  # the projector too

        # Once it reads again, the stalled watcher gets everything, in order.
        rest: list[int] = []
        async with asyncio.timeout(GUARD):
            while not rest or rest[-1] < positions[-1]:
                message = await stalled.read()
                assert isinstance(message, qry.WatchAccountResponse)
                rest.append(message.position)
        assert rest == positions
        stalled.cancel()
        await asyncio.gather(*(w.cancel() for w in others))


async def test_streams_end_when_the_server_shuts_down(
    ledger: WatchedLedger, client: LedgerClient
) -> None:
    assert ledger.servicer is not None
    assert ledger.query_server is not None
    account_id, opened = await client.open_shown()
    watchers = [watch(client, account_id) for _ in range(5)]
    await asyncio.gather(*(w.reach(opened.position) for w in watchers))

    # As serve() does: end the streams, then stop with a grace longer than the guard,
    # so a stream left open would fail this test instead of being cut by the grace.
    await ledger.servicer.close_watches()
    stopped = asyncio.create_task(ledger.query_server.stop(GUARD * 10))
    for w in watchers:
        await w.finish()
        assert w.error is not None
        failure = failure_of(w.error)
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, SERVER_SHUTTING_DOWN)
    async with asyncio.timeout(GUARD):
        await stopped


@pytest.mark.parametrize("refused", [False, True], ids=["completed", "failed"])
async def test_watch_transfer_ends_once_the_transfer_is_done(
    ledger: WatchedLedger, client: LedgerClient, refused: bool
) -> None:
    source, destination = new_id(), new_id()
    await client.open(source)
    await client.open(destination)
    await client.deposit(source, 1_000)
    sent = await client.commands.TransferFunds(
        cmd.TransferFundsRequest(
            request_id=new_request_id(),
            from_account_id=source,
            to_account_id=destination,
            amount_minor=300,
            currency="EUR",
            description="rent",
        ),
        timeout=CALL_TIMEOUT,
    )
    request = qry.WatchTransferRequest(transfer_id=sent.transfer_id, min_position=sent.position)
    watcher = Watcher(client.queries.WatchTransfer(request, timeout=GUARD * 2))
    await watcher.reach(sent.position)
    if refused:
        await client.close(destination)
    now = datetime.now(UTC)
    await ledger.step(
        destination,
        CreditTransfer(destination, sent.transfer_id, source, 300, "EUR", "rent", now),
    )
    if refused:
        await ledger.step(
            source,
            RefundTransfer(source, sent.transfer_id, destination, 300, "EUR", "closed", now),
        )
    else:
        await ledger.step(source, SettleTransfer(source, sent.transfer_id, now))
    await watcher.finish()

    assert watcher.error is None
    assert await watcher.call.code() == grpc.StatusCode.OK
    done = (
        transfer_pb2.TRANSFER_STATUS_FAILED if refused else transfer_pb2.TRANSFER_STATUS_COMPLETED
    )
    statuses = [m.transfer.status for m in watcher.messages]
    assert statuses == [transfer_pb2.TRANSFER_STATUS_PENDING, done]
    final = await client.queries.GetTransfer(
        qry.GetTransferRequest(transfer_id=sent.transfer_id), timeout=CALL_TIMEOUT
    )
    assert watcher.messages[-1].transfer == final.transfer
    assert watcher.messages[-1].position == final.transfer.position

    # Watching a finished transfer: its final state, then the end.
    again = Watcher(client.queries.WatchTransfer(request, timeout=GUARD * 2))
    await again.finish()
    assert again.error is None
    assert [m.transfer.status for m in again.messages] == [done]


async def test_bad_requests_are_refused(client: LedgerClient) -> None:
    queries = client.queries
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    bad = qry.WatchAccountRequest(account_id="not an id!")
    assert await first_failure(queries.WatchAccount(bad, timeout=GUARD)) == invalid
    unknown = qry.WatchAccountRequest(account_id=new_id())
    assert await first_failure(queries.WatchAccount(unknown, timeout=GUARD)) == not_found
    bad_transfer = qry.WatchTransferRequest(transfer_id="")
    assert await first_failure(queries.WatchTransfer(bad_transfer, timeout=GUARD)) == invalid
    no_transfer = qry.WatchTransferRequest(transfer_id=new_id("tr"))
    assert await first_failure(queries.WatchTransfer(no_transfer, timeout=GUARD)) == not_found


@pytest.mark.e2e
@pytest.mark.parametrize("backend", list(BACKENDS))
async def test_real_processes_stream_changes_and_end_on_sigterm(
    tmp_path: Path, backend: str
) -> None:
    stack = Stack(tmp_path, BACKENDS[backend])
    try:
        stack.start()
        async with connect(stack.command_target, stack.query_target) as client:
            account_id, opened = await client.open_shown()
            watcher = watch(client, account_id)
            await watcher.reach(opened.position)
            positions = await history(client, account_id)
            await watcher.reach(positions[-1])
            assert [m.position for m in watcher.messages] == [opened.position, *positions]
            streamed = [m.transaction for m in watcher.messages if m.HasField("transaction")]
            assert streamed == await client.transactions(account_id)
            resumed = watch(client, account_id, from_position=positions[3])
            await resumed.reach(positions[-1])
            assert [m.position for m in resumed.messages] == positions[4:]
            await check_against_queries(client, account_id, resumed.messages)

            stack[QUERY_SERVER].terminate()
            await watcher.finish()
            assert watcher.error is not None
            failure = failure_of(watcher.error)
            assert (failure.code, failure.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                SERVER_SHUTTING_DOWN,
            )
            assert await asyncio.to_thread(stack[QUERY_SERVER].wait_exit) == 0
            logged = stack[QUERY_SERVER].records()
            assert not [r for r in logged if r.get("level") in ("error", "critical")], logged
    finally:
        stack.close()


class CountedChanges:
    """A stand-in for the view store's change watcher: wakes at once, knows if closed."""

    def __init__(self) -> None:
        self.closed = False

    async def wait(self, budget: float | None = None) -> bool:
        await asyncio.sleep(0.001)
        return True

    def close(self) -> None:
        self.closed = True


async def test_the_follower_closes_its_change_watcher_on_shutdown_whether_or_not_it_polls() -> None:
    position = 0

    async def read_position() -> int:
        return position

    made: list[CountedChanges] = []

    def changes() -> CountedChanges:
        made.append(CountedChanges())
        return made[-1]

    follower = CheckpointFollower(read_position, changes=changes)
    waiting = asyncio.create_task(follower.wait_for(5, budget=GUARD))
    await asyncio.sleep(0.05)
    position = 5
    assert await waiting
    async with asyncio.timeout(GUARD):
        while follower.polling:  # noqa: ASYNC110 (nothing to await)
            await asyncio.sleep(0.01)
    assert len(made) == 1
    assert not made[0].closed  # kept for the next waiter
    await follower.close_watches()
    assert made[0].closed
