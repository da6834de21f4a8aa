"""GetAccountAsOf through the real stubs, checked against the event log itself.

A seeded random history (deposits, withdrawals, freezes, transfers both ways with
their credits, rejections, settlements and refunds, and a closing) is written through
the in-process command server, with a clock that repeats instants, lands on whole
seconds and moves by odd microseconds. Then, for every version of every account, the
query server's answer must equal folding the account's stream (read straight from
the event store) with the accounts decider, by version and by time.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.application.command_handler import CommandHandler
from ledger.banking.views import codec
from ledger.domain import accounts
from ledger.domain.accounts import (
    Account,
    AccountClosed,
    AccountFrozen,
    AccountOpened,
    AccountUnfrozen,
    Command,
    CreditTransfer,
    Event,
    FundsDeposited,
    FundsWithdrawn,
    RefundTransfer,
    SettleTransfer,
    TransferCredited,
    TransferCreditRejected,
    TransferDebited,
    TransferRefunded,
    TransferSettled,
)
from ledger.eventstore.port import RecordedEvent
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.v1 import account_command_service_pb2 as cmd
from ledger.v1 import account_pb2
from ledger.v1 import account_query_service_pb2 as qry
from tests.grpc.conftest import InProcessLedger, LedgerFactory
from tests.support import CALL_TIMEOUT, LedgerClient, connect, expect_failure, new_id

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAR_AHEAD = 10**12
START = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)  # a whole second: no microseconds
ALL_ACCOUNT_EVENTS = {
    AccountOpened,
    FundsDeposited,
    FundsWithdrawn,
    AccountFrozen,
    AccountUnfrozen,
    AccountClosed,
    TransferDebited,
    TransferCredited,
    TransferCreditRejected,
    TransferSettled,
    TransferRefunded,
}


class SteppingClock:
    """The commands' clock: repeats an instant, jumps whole seconds, or odd microseconds."""

    def __init__(self, rng: random.Random) -> None:
        self.now = START
        self._rng = rng

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> None:
        step = self._rng.choice(["same", "second", "micros", "micros"])
        if step == "second":  # the next whole second
            self.now = self.now.replace(microsecond=0) + timedelta(seconds=1)
        elif step == "micros":
            self.now += timedelta(microseconds=self._rng.randint(1, 1_500_000))


def decoded(recorded: RecordedEvent) -> Event:
    event = codec.decode_recorded(recorded)
    assert isinstance(event, Event)
    return event


def occurred_at(event: Event) -> datetime:
    """The one time every account event carries (its name depends on the event)."""
    (at,) = [
        getattr(event, f.name)
        for f in dataclasses.fields(event)
        if isinstance(getattr(event, f.name), datetime)
    ]
    assert isinstance(at, datetime)
    return at


@dataclasses.dataclass
class History:
    """Writes one account's history through the stubs (and the saga's steps directly)."""

    client: LedgerClient
    saga: CommandHandler[accounts.State, accounts.Command, accounts.Event]
    events: SqliteEventStore
    clock: SteppingClock
    rng: random.Random
    main: str
    other: str

    async def _rejected_ok(self, call: Awaitable[object]) -> None:
        try:
            await call
        except grpc.aio.AioRpcError as error:
            # a business rule (frozen, insufficient funds): nothing was appended
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise

    async def spare(self) -> str:
        """A new, empty account to send money to."""
        self.clock.tick()
        opened = await self.client.open(new_id())
        return opened.account_id

    async def _step(self, account_id: str, command: Command) -> None:
        self.clock.tick()
        request_id = f"saga-{uuid.uuid4()}"
        await self.saga.handle(account_id, command, request_id=request_id, fingerprint=request_id)

    async def deposit(self, account_id: str, amount: int) -> None:
        self.clock.tick()
        await self._rejected_ok(self.client.deposit(account_id, amount))

    async def withdraw(self, account_id: str, amount: int) -> None:
        self.clock.tick()
        await self._rejected_ok(self.client.withdraw(account_id, amount))

    async def freeze(self, account_id: str) -> None:
        self.clock.tick()
        request = cmd.FreezeAccountRequest(
            request_id=str(uuid.uuid4()), account_id=account_id, reason="checks"
        )
        await self._rejected_ok(self.client.commands.FreezeAccount(request, timeout=CALL_TIMEOUT))

    async def unfreeze(self, account_id: str) -> None:
        self.clock.tick()
        request = cmd.UnfreezeAccountRequest(request_id=str(uuid.uuid4()), account_id=account_id)
        await self._rejected_ok(self.client.commands.UnfreezeAccount(request, timeout=CALL_TIMEOUT))

    async def transfer(
        self, source: str, destination: str, amount: int, *, refuse: bool = False
    ) -> None:
        """The debit through TransferFunds; the credit and its outcome as the process
        manager would decide them (it does not run in this in-process ledger). With
        `refuse`, the (empty) destination is closed between the debit and the credit,
        so the credit is rejected and the source refunded."""
        self.clock.tick()
        request = cmd.TransferFundsRequest(
            request_id=str(uuid.uuid4()),
            from_account_id=source,
            to_account_id=destination,
            amount_minor=amount,
            currency="EUR",
            description="rent",
        )
        try:
            sent = await self.client.commands.TransferFunds(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            return
        if refuse:
            self.clock.tick()
            await self.client.close(destination)
        at = self.clock.now
        credit = CreditTransfer(destination, sent.transfer_id, source, amount, "EUR", "rent", at)
        await self._step(destination, credit)
        outcome = codec.decode_recorded((await stream(self.events, destination))[-1])
        assert isinstance(outcome, TransferCredited | TransferCreditRejected)
        at = self.clock.now
        if isinstance(outcome, TransferCredited):
            await self._step(source, SettleTransfer(source, sent.transfer_id, at))
        else:
            refund = RefundTransfer(source, sent.transfer_id, destination, amount, "EUR", "no", at)
            await self._step(source, refund)

    async def random_step(self, balance: int) -> None:
        main, other, rng = self.main, self.other, self.rng
        match rng.choice(
            [
                *("deposit", "deposit", "withdraw", "withdraw", "freeze", "unfreeze"),
                *("out", "out_refused", "in", "freeze_other", "unfreeze_other"),
            ]
        ):
            case "deposit":
                await self.deposit(main, rng.randint(1, 5_000))
            case "withdraw":  # sometimes more than the balance: refused, nothing appended
                await self.withdraw(main, rng.randint(1, max(1, balance + 500)))
            case "freeze":
                await self.freeze(main)
            case "unfreeze":
                await self.unfreeze(main)
            case "out":
                amount = rng.randint(1, max(1, balance))
                await self.transfer(main, other, amount)
            case "out_refused":
                amount = rng.randint(1, max(1, balance))
                await self.transfer(main, await self.spare(), amount, refuse=True)
            case "in":
                await self.transfer(other, main, rng.randint(1, 700))
            case "freeze_other":
                await self.freeze(other)
            case _:
                await self.unfreeze(other)


async def stream(events: SqliteEventStore, account_id: str) -> list[RecordedEvent]:
    return await events.read_stream(accounts.accounts.stream_for(account_id))


def fold(recorded: list[RecordedEvent]) -> Account:
    state: accounts.State = None
    for r in recorded:
        state = accounts.evolve(state, decoded(r))
    assert state is not None
    return state


def proto_status(account: Account) -> account_pb2.AccountStatus.ValueType:
    return account_pb2.AccountStatus.Value(f"ACCOUNT_STATUS_{account.status.value}")


def stamp(at: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(at)
    return result


async def as_of(
    client: LedgerClient,
    account_id: str,
    *,
    version: int | None = None,
    at: datetime | Timestamp | None = None,
    min_position: int = 0,
    deadline: float = CALL_TIMEOUT,
) -> account_pb2.Account:
    request = qry.GetAccountAsOfRequest(account_id=account_id, min_position=min_position)
    if version is not None:
        request.as_of_version = version
    if at is not None:
        request.as_of_time.CopyFrom(at if isinstance(at, Timestamp) else stamp(at))
    response = await client.queries.GetAccountAsOf(request, timeout=deadline)
    return response.account


def expected(recorded: list[RecordedEvent], upto: int) -> tuple[int, int, int, int, datetime]:
    """balance, status, version, position and time after the events up to index `upto`."""
    state = fold(recorded[: upto + 1])
    last = recorded[upto]
    return (
        state.balance_minor,
        proto_status(state),
        last.version,
        last.position,
        occurred_at(decoded(last)),
    )


def shown(account: account_pb2.Account) -> tuple[int, int, int, int, datetime]:
    return (
        account.balance_minor,
        account.status,
        account.version,
        account.position,
        account.updated_at.ToDatetime(tzinfo=UTC),
    )


async def write_history(
    ledger: InProcessLedger, client: LedgerClient, clock: SteppingClock, rng: random.Random
) -> tuple[str, str, SqliteEventStore]:
    events = SqliteEventStore(ledger.root / "events.sqlite3")
    await events.open()
    saga = CommandHandler(events, accounts.accounts, codec)
    main, other = new_id(), new_id()
    history = History(client, saga, events, clock, rng, main, other)
    await client.open(main, owner_name="Ada")
    clock.tick()
    await client.open(other, owner_name="Bob")
    # A scripted start so that every kind of account event occurs at least once.
    await history.deposit(main, 10_000)
    await history.deposit(other, 10_000)
    await history.transfer(main, await history.spare(), 700, refuse=True)  # refunded
    await history.transfer(main, other, 300)  # credited, settled
    await history.transfer(other, main, 250)  # credited on the main account
    await history.withdraw(main, 50)
    while len(await stream(events, main)) < 70:
        await history.random_step(fold(await stream(events, main)).balance_minor)
    # Empty it, then close it between a transfer's debit and its credit: the credit
    # is rejected on the closed account.
    await history.unfreeze(main)
    await history.unfreeze(other)
    await history.withdraw(main, fold(await stream(events, main)).balance_minor)
    await history.transfer(other, main, 200, refuse=True)
    assert fold(await stream(events, main)).status is accounts.AccountStatus.CLOSED
    return main, other, events


@pytest.mark.parametrize("seed", [5, 2026])
async def test_every_version_and_every_instant_agree_with_the_event_log(
    make_ledger: LedgerFactory, seed: int
) -> None:
    rng = random.Random(seed)
    clock = SteppingClock(rng)
    ledger = await make_ledger(clock=clock)
    async with connect(ledger.command_target, ledger.query_target) as client:
        main, other, events = await write_history(ledger, client, clock, rng)
        try:
            for account_id in (main, other):
                await check_account(client, events, account_id)
            kinds = {type(codec.decode_recorded(r)) for r in await stream(events, main)}
            assert kinds == ALL_ACCOUNT_EVENTS
        finally:
            await events.close()


async def check_account(client: LedgerClient, events: SqliteEventStore, account_id: str) -> None:
    recorded = await stream(events, account_id)
    times = [occurred_at(decoded(r)) for r in recorded]
    assert times == sorted(times)
    assert len(set(times)) < len(times), "the clock never repeated an instant"
    assert any(t.microsecond == 0 for t in times)
    assert any(t.microsecond for t in times)
    current = await client.account(account_id, min_position=recorded[-1].position)
    opened = fold(recorded[:1])

    for index, r in enumerate(recorded):
        assert r.version == index
        account = await as_of(client, account_id, version=r.version)
        assert shown(account) == expected(recorded, index), f"as of version {r.version}"
        assert (account.account_id, account.owner_name, account.currency) == (
            account_id,
            opened.owner_name,
            opened.currency,
        )
        assert account.opened_at == current.opened_at

    for index, at in enumerate(times):
        # At an event's instant: the last event stamped at or before it (ties included).
        last = max(i for i, t in enumerate(times) if t <= at)
        account = await as_of(client, account_id, at=at)
        assert shown(account) == expected(recorded, last), f"as of {at} (event {index})"
        # A microsecond earlier: the last event before that instant, if any.
        before = [i for i, t in enumerate(times) if t < at]
        earlier = at - timedelta(microseconds=1)
        if before:
            account = await as_of(client, account_id, at=earlier)
            assert shown(account) == expected(recorded, before[-1]), f"as of {earlier}"
        else:
            await expect_failure(as_of(client, account_id, at=earlier), NOT_FOUND)
        # Nanoseconds past the instant count as that microsecond.
        later = stamp(at)
        later.nanos += 999
        assert shown(await as_of(client, account_id, at=later)) == expected(recorded, last)


async def test_before_opening_is_not_found_and_later_is_the_current_state(
    client: LedgerClient,
) -> None:
    account_id = new_id()
    opened = await client.open(account_id)
    deposited = await client.deposit(account_id, 500)
    current = await client.account(account_id, min_position=deposited.position)
    opened_at = current.opened_at.ToDatetime(tzinfo=UTC)

    await expect_failure(
        as_of(client, account_id, at=opened_at - timedelta(microseconds=1)), NOT_FOUND
    )
    await expect_failure(as_of(client, account_id, at=datetime(1, 1, 1, tzinfo=UTC)), NOT_FOUND)
    at_opening = await as_of(client, account_id, at=opened_at)
    assert (at_opening.balance_minor, at_opening.version) == (0, 0)
    assert at_opening.position == opened.position

    for later in (
        await as_of(client, account_id, at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        await as_of(client, account_id, version=1),
        await as_of(client, account_id, version=2**63 - 1),
    ):
        assert later == current
    # An unknown account, with the views known to be current.
    await expect_failure(
        as_of(client, new_id(), version=0, min_position=deposited.position), NOT_FOUND
    )
    await expect_failure(
        as_of(client, new_id(), at=datetime.now(UTC), min_position=deposited.position), NOT_FOUND
    )


async def test_one_account_history_is_not_another_s(client: LedgerClient) -> None:
    first, second = new_id(), new_id()
    await client.open(first)
    await client.open(second)
    await client.deposit(first, 100)
    last = await client.deposit(second, 7)
    await client.deposit(second, 8)
    account = await as_of(client, second, version=1, min_position=last.position)
    assert (account.account_id, account.balance_minor, account.version) == (second, 7, 1)
    account = await as_of(client, first, version=1)
    assert (account.account_id, account.balance_minor) == (first, 100)


async def test_invalid_requests(client: LedgerClient) -> None:
    opened = await client.open()
    account_id = opened.account_id
    neither = qry.GetAccountAsOfRequest(account_id=account_id)
    failure = await expect_failure(
        client.queries.GetAccountAsOf(neither, timeout=CALL_TIMEOUT), INVALID
    )
    assert set(failure.violations) == {"as_of"}

    failure = await expect_failure(as_of(client, account_id, version=-1), INVALID)
    assert set(failure.violations) == {"as_of_version"}

    for bad in (Timestamp(seconds=0, nanos=-1), Timestamp(seconds=253_402_300_800)):
        failure = await expect_failure(as_of(client, account_id, at=bad), INVALID)
        assert set(failure.violations) == {"as_of_time"}

    for bad_id in ("", "x" * 65, "a b"):
        failure = await expect_failure(as_of(client, bad_id, version=0), INVALID)
        assert set(failure.violations) == {"account_id"}
    both_wrong = qry.GetAccountAsOfRequest(account_id="")
    failure = await expect_failure(
        client.queries.GetAccountAsOf(both_wrong, timeout=CALL_TIMEOUT), INVALID
    )
    assert set(failure.violations) == {"account_id", "as_of"}


async def test_min_position_is_honoured(ledger: InProcessLedger, client: LedgerClient) -> None:
    account_id = new_id()
    opened = await client.open(account_id)
    await as_of(client, account_id, version=0, min_position=opened.position)
    await ledger.stop_projector()
    deposited = await client.deposit(account_id, 99)
    # Without min_position the stale views answer; with it, the call waits.
    assert (await as_of(client, account_id, version=5)).balance_minor == 0
    await expect_failure(
        as_of(client, account_id, version=5, min_position=deposited.position, deadline=0.5),
        grpc.StatusCode.UNAVAILABLE,
        "PROJECTION_BEHIND",
    )
    await ledger.start_projector()
    account = await as_of(client, account_id, version=5, min_position=deposited.position)
    assert (account.balance_minor, account.version) == (99, 1)
    await expect_failure(
        as_of(client, account_id, version=0, min_position=FAR_AHEAD, deadline=1.0),
        grpc.StatusCode.UNAVAILABLE,
        "PROJECTION_BEHIND",
    )
