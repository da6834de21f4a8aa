"""Money is conserved under load, across a crash of the command server.

Eight accounts, a few hundred concurrent random transfers, deposits and withdrawals
through the real gRPC stubs, many bound to fail (insufficient funds; two destinations
closed mid-run, so credits decided before a close are refused and refunded), and the
command servers SIGKILLed halfway and restarted on the same ports and data. Clients
retry an unanswered call with the same request id, as a real client would, so every
operation ends acknowledged or refused. Once the log is quiet:

- every transfer is COMPLETED or FAILED, and its money moved exactly once;
- the balances sum to the acknowledged deposits minus the acknowledged withdrawals,
  and none is negative;
- each account's view equals a replay of its stream from the event log file.

The transfer process manager runs in a second command server (the clients' one has
LEDGER_TRANSFER_PROCESSOR=off), so that the test can stop it while it closes an
account behind a transfer's debit: the close then certainly lands before that
transfer's credit, which is refused and refunded. With the process manager in the
clients' server, that order would be a race against it (a credit follows its debit
within a millisecond or two).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

import grpc
import pytest

from ledger.backends import event_store_from_env
from ledger.banking.views import codec
from ledger.domain import accounts
from ledger.domain.accounts import (
    Account,
    TransferCredited,
    TransferCreditRejected,
    TransferDebited,
    TransferRefunded,
    TransferSettled,
)
from ledger.eventstore.port import RecordedEvent
from ledger.v1 import account_command_service_pb2 as cmd
from ledger.v1 import account_pb2, transfer_pb2
from ledger.v1 import account_query_service_pb2 as qry
from tests.support import CALL_TIMEOUT, LedgerClient, RpcFailure, failure_of
from tests.support.backends import BACKENDS
from tests.support.processes import ALL, COMMAND_SERVER, Stack
from tests.transfers.client import WAIT_LIMIT, finished, transfer_request

pytestmark = pytest.mark.e2e
T = TypeVar("T")

ACCOUNTS = [f"inv-{n}" for n in range(8)]
DOOMED = ACCOUNTS[:2]  # only receive; closed mid-run
PAYERS = ACCOUNTS[2:]
OPENING_BALANCE = 1000
WORKERS = 16
OPERATIONS_PER_WORKER = 40
# An unanswered call (server killed or restarting) may or may not have happened: retry it.
AMBIGUOUS = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# Refusals that change nothing, which the workload provokes on purpose.
EXPECTED_REFUSALS = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
TRANSFER_PROCESSOR = "transfer_processor"
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


@dataclass
class Books:
    """What the clients were told: the only truth the invariants may rely on."""

    deposits: int = 0
    withdrawals: int = 0
    transfers: dict[str, cmd.TransferFundsResponse] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    done: int = 0
    _milestones: dict[int, asyncio.Event] = field(default_factory=dict)

    def one_done(self) -> None:
        self.done += 1
        for count, reached in self._milestones.items():
            if self.done >= count:
                reached.set()

    async def when_done(self, fraction: float) -> None:
        """Wait until that fraction of the workload was answered."""
        count = int(fraction * WORKERS * OPERATIONS_PER_WORKER)
        reached = self._milestones.setdefault(count, asyncio.Event())
        if self.done >= count:
            reached.set()
        await reached.wait()


@asynccontextmanager
async def reconnecting_client(stack: Stack) -> AsyncIterator[LedgerClient]:
    async with (
        grpc.aio.insecure_channel(stack.command_target, options=FAST_RECONNECT) as commands,
        grpc.aio.insecure_channel(stack.query_target, options=FAST_RECONNECT) as queries,
    ):
        yield LedgerClient(commands, queries)


async def answered(call: Callable[[], Awaitable[T]]) -> T | RpcFailure:
    """The call's answer, retrying the very same request while it gets none."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in AMBIGUOUS or loop.time() > deadline:
                return failure_of(error)
        await asyncio.sleep(0.05)


def note_refusal(books: Books, failure: RpcFailure) -> None:
    assert failure.code in EXPECTED_REFUSALS, failure
    books.refusals[failure.reason] += 1


async def random_operation(client: LedgerClient, books: Books, rng: random.Random) -> None:
    roll = rng.random()
    commands = client.commands
    if roll < 0.55:
        source = rng.choice(PAYERS)
        destination = rng.choice([a for a in ACCOUNTS if a != source])
        request = transfer_request(source, destination, rng.randint(1, 400))
        sent = await answered(lambda: commands.TransferFunds(request, timeout=CALL_TIMEOUT))
        if isinstance(sent, RpcFailure):
            note_refusal(books, sent)
        else:
            books.transfers[sent.transfer_id] = sent
    elif roll < 0.8:
        amount = rng.randint(1, 300)
        deposit = cmd.DepositFundsRequest(
            request_id=f"dep-{rng.random()}",
            account_id=rng.choice(PAYERS),
            amount_minor=amount,
            currency="EUR",
        )
        done = await answered(lambda: commands.DepositFunds(deposit, timeout=CALL_TIMEOUT))
        assert not isinstance(done, RpcFailure), done
        books.deposits += amount
    else:
        amount = rng.randint(1, 600)
        withdrawal = cmd.WithdrawFundsRequest(
            request_id=f"wd-{rng.random()}",
            account_id=rng.choice(PAYERS),
            amount_minor=amount,
            currency="EUR",
        )
        taken = await answered(lambda: commands.WithdrawFunds(withdrawal, timeout=CALL_TIMEOUT))
        if isinstance(taken, RpcFailure):
            note_refusal(books, taken)
        else:
            books.withdrawals += amount


async def worker(client: LedgerClient, books: Books, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(OPERATIONS_PER_WORKER):
        await random_operation(client, books, rng)
        books.one_done()


async def send_bait(client: LedgerClient, books: Books, account_id: str) -> None:
    """A transfer to `account_id` whose debit is decided and whose credit is not yet."""
    for source in PAYERS:
        request = transfer_request(source, account_id, 1)
        sent = await answered(partial(client.commands.TransferFunds, request, timeout=CALL_TIMEOUT))
        if not isinstance(sent, RpcFailure):
            books.transfers[sent.transfer_id] = sent
            return
    raise AssertionError("no account could pay 1 minor unit")


async def empty_and_close(
    client: LedgerClient, books: Books, account_id: str, stack: Stack
) -> None:
    """With the process manager stopped (no credit lands meanwhile), withdraw what the
    view shows, send a bait transfer, and close at the version seen before the bait;
    again if the view lagged (ABORTED). The bait's credit then finds the account closed:
    a refund, certainly, once the process manager runs again."""
    processor = stack[TRANSFER_PROCESSOR]
    await asyncio.to_thread(processor.stop)
    try:
        await _empty_and_close(client, books, account_id)
    finally:
        await asyncio.to_thread(processor.start)


async def _empty_and_close(client: LedgerClient, books: Books, account_id: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    attempt = 0
    while True:
        assert loop.time() < deadline, f"could not close {account_id}"
        attempt += 1
        view = await client.account(account_id)
        version = view.version
        if view.balance_minor:
            withdrawal = cmd.WithdrawFundsRequest(
                request_id=f"empty-{account_id}-{attempt}",
                account_id=account_id,
                amount_minor=view.balance_minor,
                currency="EUR",
                expected_version=version,
            )
            taken = await answered(
                partial(client.commands.WithdrawFunds, withdrawal, timeout=CALL_TIMEOUT)
            )
            if isinstance(taken, RpcFailure):
                await asyncio.sleep(0.005)
                continue
            books.withdrawals += view.balance_minor
            version = taken.version
        await send_bait(client, books, account_id)
        close = cmd.CloseAccountRequest(
            request_id=f"close-{account_id}-{attempt}",
            account_id=account_id,
            expected_version=version,
        )
        closed = await answered(partial(client.commands.CloseAccount, close, timeout=CALL_TIMEOUT))
        if not isinstance(closed, RpcFailure):
            return
        await asyncio.sleep(0.005)


async def chaos(client: LedgerClient, books: Books, stack: Stack) -> None:
    """Close a destination, SIGKILL and restart both command servers, close another."""
    await books.when_done(0.25)
    await empty_and_close(client, books, DOOMED[0], stack)
    await books.when_done(0.5)
    servers = [stack[COMMAND_SERVER], stack[TRANSFER_PROCESSOR]]
    for server in servers:
        await asyncio.to_thread(server.kill)
    for server in servers:
        await asyncio.to_thread(server.start)
    await books.when_done(0.75)
    await empty_and_close(client, books, DOOMED[1], stack)


@dataclass(frozen=True)
class Replayed:
    """The accounts folded from their streams, their account events, the log head."""

    accounts: dict[str, tuple[Account, RecordedEvent]]  # state, and its stream's last event
    events: list[object]
    head: int


def as_viewed(state: Account, last: RecordedEvent) -> account_pb2.Account:
    """What GetAccount must show for this state (timestamps aside)."""
    return account_pb2.Account(
        account_id=state.account_id,
        owner_name=state.owner_name,
        currency=state.currency,
        balance_minor=state.balance_minor,
        status=account_pb2.AccountStatus.Value(f"ACCOUNT_STATUS_{state.status.value}"),
        version=last.version,
        position=last.position,
    )


async def replay(stack: Stack) -> Replayed:
    """Every account folded from its stream, read from the stack's event store itself."""
    store = event_store_from_env(stack.env())
    await store.open()
    try:
        folded: dict[str, tuple[Account, RecordedEvent]] = {}
        log: list[RecordedEvent] = []
        for account_id in ACCOUNTS:
            recorded = await store.read_stream(accounts.accounts.stream_for(account_id))
            events = [cast(accounts.Event, codec.decode_recorded(r)) for r in recorded]
            state = accounts.accounts.fold(None, events)
            assert state is not None
            folded[account_id] = (state, recorded[-1])
            log.extend(recorded)
        log.sort(key=lambda r: r.position)  # the account streams merged in log order
        everything = [codec.decode_recorded(r) for r in log]
        # The last account event replayed: views caught up to it show all of the above
        # (the log's head may be further on, in streams the views do not follow).
        head = log[-1].position
        return Replayed(folded, everything, head)
    finally:
        await store.close()


async def quiet(stack: Stack) -> Replayed:
    """The replay once no transfer is pending on any account."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while True:
        replayed = await replay(stack)
        if not any(state.pending_transfers for state, _ in replayed.accounts.values()):
            return replayed
        assert loop.time() < deadline, "transfers still pending on the source accounts"
        await asyncio.sleep(0.05)


def money_moved(events: list[object]) -> dict[str, list[str]]:
    """Each transfer's steps on the account streams, in log order."""
    steps: dict[str, list[str]] = {}
    for event in events:
        if isinstance(
            event,
            TransferDebited
            | TransferCredited
            | TransferCreditRejected
            | TransferSettled
            | TransferRefunded,
        ):
            steps.setdefault(event.transfer_id, []).append(type(event).__name__)
    return steps


@pytest.fixture(params=sorted(BACKENDS))
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    started = Stack(tmp_path, BACKENDS[request.param], {"LEDGER_TRANSFER_PROCESSOR": "off"})
    started.add(TRANSFER_PROCESSOR, COMMAND_SERVER, LEDGER_TRANSFER_PROCESSOR="on")
    started.start(*ALL, TRANSFER_PROCESSOR)
    try:
        yield started
    finally:
        started.close()


async def test_money_is_conserved_under_load_and_a_crash(stack: Stack) -> None:
    books = Books()
    async with reconnecting_client(stack) as client:
        for account_id in ACCOUNTS:
            await client.open(account_id)
        for account_id in PAYERS:
            await client.deposit(account_id, OPENING_BALANCE)
            books.deposits += OPENING_BALANCE

        await asyncio.gather(
            chaos(client, books, stack),
            *(worker(client, books, seed) for seed in range(WORKERS)),
        )
        outcomes = [await finished(client, sent) for sent in books.transfers.values()]
        statuses = Counter(transfer_pb2.TransferStatus.Name(t.status) for t in outcomes)
        replayed = await quiet(stack)
        head, events = replayed.head, replayed.events

        views = {a: await client.account(a, min_position=head) for a in ACCOUNTS}
        listed = {
            a: await client.queries.ListTransfers(
                qry.ListTransfersRequest(account_id=a, page_size=1000, min_position=head),
                timeout=CALL_TIMEOUT,
            )
            for a in ACCOUNTS
        }
    print(f"\ntransfers {dict(statuses)}, refusals {dict(books.refusals)}")

    # Every transfer finished, and its money moved exactly once.
    assert set(statuses) <= {"TRANSFER_STATUS_COMPLETED", "TRANSFER_STATUS_FAILED"}
    steps = money_moved(events)
    assert set(steps) == set(books.transfers)
    for transfer_id, moved in steps.items():
        assert moved in (
            ["TransferDebited", "TransferCredited", "TransferSettled"],
            ["TransferDebited", "TransferCreditRejected", "TransferRefunded"],
        ), transfer_id
    failed = {t for t, moved in steps.items() if "TransferRefunded" in moved}
    assert statuses["TRANSFER_STATUS_FAILED"] == len(failed) >= len(DOOMED)
    assert {t.transfer_id for t in outcomes if t.failure_reason == "ACCOUNT_CLOSED"} == failed

    # The balances hold what the clients were told, and nothing is negative.
    assert sum(v.balance_minor for v in views.values()) == books.deposits - books.withdrawals
    assert all(v.balance_minor >= 0 for v in views.values())

    # Each view is its stream replayed.
    for account_id, view in views.items():
        shown = account_pb2.Account()
        shown.CopyFrom(view)
        shown.ClearField("opened_at")
        shown.ClearField("updated_at")
        assert shown == as_viewed(*replayed.accounts[account_id])
    for account_id in DOOMED:
        assert views[account_id].status == account_pb2.ACCOUNT_STATUS_CLOSED

    # ListTransfers shows each transfer on both of its accounts.
    for account_id, page in listed.items():
        touching = {
            e.transfer_id
            for e in events
            if isinstance(e, TransferDebited) and account_id in (e.account_id, e.to_account_id)
        }
        assert {t.transfer_id for t in page.transfers} == touching, account_id
