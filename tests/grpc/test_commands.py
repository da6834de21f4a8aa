"""AccountCommandService through the real stubs: responses, validation, status codes
with rich details, optimistic concurrency, idempotent retries."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import grpc
import pytest

from ledger.v1 import account_command_service_pb2 as cmd
from ledger.v1 import account_pb2
from tests.grpc.conftest import InProcessLedger, LedgerFactory
from tests.support import LedgerClient, connect, expect_failure, new_id, new_request_id

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def funded(client: LedgerClient, amount: int = 1_000, currency: str = "EUR") -> str:
    account_id = new_id()
    await client.open(account_id, currency=currency)
    await client.deposit(account_id, amount, currency=currency)
    return account_id


async def test_commands_answer_versions_positions_and_balances(client: LedgerClient) -> None:
    account_id = new_id()
    opened = await client.open(account_id, owner_name="Grace Hopper", currency="USD")
    deposited = await client.deposit(account_id, 2_500, currency="USD", description="salary")
    withdrawn = await client.withdraw(account_id, 1_000, currency="USD")
    emptied = await client.withdraw(account_id, 1_500, currency="USD")
    closed = await client.close(account_id)

    assert (opened.account_id, opened.version) == (account_id, 0)
    assert (deposited.version, deposited.balance_minor) == (1, 2_500)
    assert (withdrawn.version, withdrawn.balance_minor) == (2, 1_500)
    assert (emptied.version, emptied.balance_minor) == (3, 0)
    assert (closed.account_id, closed.version) == (account_id, 4)
    positions = [r.position for r in (opened, deposited, withdrawn, emptied, closed)]
    assert positions == sorted(set(positions))
    assert positions[0] > 0

    account = await client.account(account_id, min_position=closed.position)
    assert account.status == account_pb2.ACCOUNT_STATUS_CLOSED
    assert (account.balance_minor, account.version, account.position) == (0, 4, closed.position)


async def test_open_without_account_id_assigns_a_uuid_and_a_retry_gets_the_same(
    client: LedgerClient,
) -> None:
    request = cmd.OpenAccountRequest(request_id=new_request_id(), owner_name="Ann", currency="EUR")
    first = await client.commands.OpenAccount(request)
    retried = await client.commands.OpenAccount(request)
    other = await client.commands.OpenAccount(
        cmd.OpenAccountRequest(request_id=new_request_id(), owner_name="Ann", currency="EUR")
    )

    assert uuid.UUID(first.account_id)
    assert retried == first
    assert other.account_id != first.account_id
    account = await client.account(first.account_id, min_position=first.position)
    assert (account.owner_name, account.currency) == ("Ann", "EUR")


LONG = "x" * 1_000


@pytest.mark.parametrize(
    ("request_fields", "bad_fields"),
    [
        ({"account_id": "has space"}, {"account_id"}),
        ({"account_id": "a" * 65}, {"account_id"}),
        ({"account_id": "semi;colon"}, {"account_id"}),
        ({"owner_name": ""}, {"owner_name"}),
        ({"owner_name": "   "}, {"owner_name"}),
        ({"owner_name": "n" * 201}, {"owner_name"}),
        ({"owner_name": "tab\there"}, {"owner_name"}),
        ({"currency": "eur"}, {"currency"}),
        ({"currency": "EURO"}, {"currency"}),
        ({"currency": "ZZQ"}, {"currency"}),
        ({"currency": ""}, {"currency"}),
        ({"request_id": "r" * 129}, {"request_id"}),
        (
            {"account_id": "?", "owner_name": "", "currency": "x", "request_id": LONG},
            {"account_id", "owner_name", "currency", "request_id"},
        ),
    ],
)
async def test_open_account_validation(
    client: LedgerClient, request_fields: dict[str, str], bad_fields: set[str]
) -> None:
    fields = {"request_id": new_request_id(), "account_id": new_id(), "owner_name": "Ann"}
    fields |= {"currency": "EUR"} | request_fields
    failure = await expect_failure(
        client.commands.OpenAccount(cmd.OpenAccountRequest(**fields)), INVALID
    )
    assert set(failure.violations) == bad_fields, failure
    assert all(failure.violations.values())


async def test_open_account_accepts_the_limits(client: LedgerClient) -> None:
    account_id = "A" * 64
    opened = await client.open(
        account_id, owner_name="Zoë " + "n" * 196, currency="JPY", request_id="r" * 128
    )
    assert opened.account_id == account_id
    await client.open("a.b_c-9", owner_name="x", currency="CHF")


MoveCall = Callable[[LedgerClient, cmd.DepositFundsRequest], Awaitable[object]]


async def _deposit(client: LedgerClient, request: cmd.DepositFundsRequest) -> object:
    return await client.commands.DepositFunds(request)


async def _withdraw(client: LedgerClient, request: cmd.DepositFundsRequest) -> object:
    as_withdrawal = cmd.WithdrawFundsRequest()
    as_withdrawal.ParseFromString(request.SerializeToString())
    return await client.commands.WithdrawFunds(as_withdrawal)


@pytest.mark.parametrize("call", [_deposit, _withdraw], ids=["deposit", "withdraw"])
@pytest.mark.parametrize(
    ("request_fields", "bad_fields"),
    [
        ({"amount_minor": 0}, {"amount_minor"}),
        ({"amount_minor": -5}, {"amount_minor"}),
        ({"amount_minor": 10**15 + 1}, {"amount_minor"}),
        ({"currency": "usd"}, {"currency"}),
        ({"currency": ""}, {"currency"}),
        ({"description": "d" * 501}, {"description"}),
        ({"account_id": ""}, {"account_id"}),
        ({"account_id": "a/b"}, {"account_id"}),
        ({"expected_version": -1}, {"expected_version"}),
        ({"request_id": "r" * 129}, {"request_id"}),
        (
            {"amount_minor": 0, "currency": "??", "account_id": ""},
            {"amount_minor", "currency", "account_id"},
        ),
    ],
)
async def test_move_funds_validation_changes_nothing(
    client: LedgerClient,
    call: MoveCall,
    request_fields: dict[str, object],
    bad_fields: set[str],
) -> None:
    account_id = await funded(client, 1_000)
    request_id = new_request_id()
    fields: dict[str, object] = {"request_id": request_id, "account_id": account_id}
    fields |= {"amount_minor": 10, "currency": "EUR"} | request_fields
    failure = await expect_failure(call(client, cmd.DepositFundsRequest(**fields)), INVALID)  # type: ignore[arg-type]
    assert set(failure.violations) == bad_fields, failure

    # Nothing was recorded: not the command, not even its request id.
    after = await client.deposit(account_id, 1, request_id=request_id)
    assert (after.version, after.balance_minor) == (2, 1_001)
    assert len(await client.transactions(account_id, min_position=after.position)) == 2


async def test_move_funds_accepts_the_limits(client: LedgerClient) -> None:
    account_id = await funded(client, 10**15)
    moved = await client.withdraw(account_id, 10**15, description="d" * 500)
    assert moved.balance_minor == 0
    await client.deposit(account_id, 1, description="")


async def test_close_account_validation(client: LedgerClient) -> None:
    bad = cmd.CloseAccountRequest(request_id=new_request_id(), account_id="", expected_version=-2)
    failure = await expect_failure(client.commands.CloseAccount(bad), INVALID)
    assert set(failure.violations) == {"account_id", "expected_version"}


async def test_unknown_account_is_not_found(client: LedgerClient) -> None:
    missing = new_id()
    for call in (
        client.deposit(missing, 1),
        client.withdraw(missing, 1),
        client.close(missing),
    ):
        failure = await expect_failure(call, grpc.StatusCode.NOT_FOUND)
        assert missing in failure.message


async def test_opening_an_existing_account_is_already_exists(client: LedgerClient) -> None:
    account_id = new_id()
    opened = await client.open(account_id, owner_name="First")
    await expect_failure(
        client.open(account_id, owner_name="Second"), grpc.StatusCode.ALREADY_EXISTS
    )
    account = await client.account(account_id, min_position=opened.position)
    assert (account.owner_name, account.version) == ("First", 0)


async def test_business_rules_are_failed_precondition_with_a_reason(client: LedgerClient) -> None:
    account_id = await funded(client, 100, currency="EUR")
    await expect_failure(
        client.withdraw(account_id, 101), FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"
    )
    await expect_failure(
        client.deposit(account_id, 5, currency="USD"), FAILED_PRECONDITION, "CURRENCY_MISMATCH"
    )
    await expect_failure(
        client.withdraw(account_id, 5, currency="GBP"), FAILED_PRECONDITION, "CURRENCY_MISMATCH"
    )
    await expect_failure(client.close(account_id), FAILED_PRECONDITION, "BALANCE_NOT_ZERO")

    emptied = await client.withdraw(account_id, 100)
    assert (emptied.version, emptied.balance_minor) == (2, 0)
    await client.close(account_id)
    for call in (
        client.deposit(account_id, 1),
        client.withdraw(account_id, 1),
        client.close(account_id),
    ):
        await expect_failure(call, FAILED_PRECONDITION, "ACCOUNT_CLOSED")

    account = await client.account(account_id, min_position=emptied.position + 1)
    assert (account.status, account.balance_minor, account.version) == (
        account_pb2.ACCOUNT_STATUS_CLOSED,
        0,
        3,
    )


async def test_stale_expected_version_is_aborted_and_changes_nothing(client: LedgerClient) -> None:
    account_id = new_id()
    await client.open(account_id)
    first = await client.deposit(account_id, 100, expected_version=0)
    assert first.version == 1

    for call in (
        client.deposit(account_id, 7, expected_version=0),
        client.withdraw(account_id, 7, expected_version=5),
        client.close(account_id, expected_version=0),
    ):
        await expect_failure(call, grpc.StatusCode.ABORTED, "WRONG_EXPECTED_VERSION")

    second = await client.withdraw(account_id, 100, expected_version=1)
    closed = await client.close(account_id, expected_version=2)
    assert (second.balance_minor, closed.version) == (0, 3)


async def test_a_retry_returns_the_original_response_and_appends_nothing(
    client: LedgerClient,
) -> None:
    account_id = await funded(client, 1_000)
    request_id = new_request_id()
    original = await client.withdraw(account_id, 300, request_id=request_id, description="rent")
    later = await client.deposit(account_id, 50)
    retried = await client.withdraw(account_id, 300, request_id=request_id, description="rent")

    assert retried == original  # the original balance and position, not today's
    assert later.balance_minor == 750
    transactions = await client.transactions(account_id, min_position=later.position)
    assert [t.amount_minor for t in transactions] == [1_000, 300, 50]


@pytest.mark.parametrize(
    "changed",
    [
        {"amount_minor": 301},
        {"description": "not rent"},
        {"expected_version": 2},
    ],
)
async def test_a_request_id_reused_with_other_parameters_is_refused(
    client: LedgerClient, changed: dict[str, object]
) -> None:
    account_id = await funded(client, 1_000)
    request_id = new_request_id()
    original = await client.withdraw(account_id, 300, request_id=request_id, description="rent")
    fields: dict[str, object] = {"amount_minor": 300, "description": "rent"} | changed
    failure = await expect_failure(
        client.withdraw(account_id, request_id=request_id, **fields),  # type: ignore[arg-type]
        INVALID,
        "REQUEST_ID_REUSED",
    )
    assert "request_id" in failure.violations
    await expect_failure(
        client.deposit(account_id, 300, request_id=request_id, description="rent"),
        INVALID,
        "REQUEST_ID_REUSED",
    )
    transactions = await client.transactions(account_id, min_position=original.position)
    assert len(transactions) == 2


async def test_open_account_retry_and_reuse(client: LedgerClient) -> None:
    account_id, request_id = new_id(), new_request_id()
    original = await client.open(account_id, owner_name="Ann", request_id=request_id)
    assert await client.open(account_id, owner_name="Ann", request_id=request_id) == original
    await expect_failure(
        client.open(account_id, owner_name="Bob", request_id=request_id),
        INVALID,
        "REQUEST_ID_REUSED",
    )


async def test_request_ids_are_scoped_to_the_account_they_address(client: LedgerClient) -> None:
    """As documented in the API: the dedupe window of a request id is its account's stream."""
    first, second = await funded(client, 100), await funded(client, 100)
    request_id = new_request_id()
    on_first = await client.deposit(first, 10, request_id=request_id)
    on_second = await client.deposit(second, 10, request_id=request_id)
    assert (on_first.account_id, on_second.account_id) == (first, second)
    assert on_first.balance_minor == on_second.balance_minor == 110
    assert await client.deposit(first, 10, request_id=request_id) == on_first


async def test_retries_survive_a_new_command_handler(make_ledger: LedgerFactory) -> None:
    """A second command server on the same log (as after a restart) knows the request ids."""
    ledger = await make_ledger()
    async with connect(ledger.command_target, ledger.query_target) as client:
        account_id = await funded(client, 500)
        request_id = new_request_id()
        original = await client.withdraw(account_id, 200, request_id=request_id)
    fresh_target = await ledger.add_command_server()
    async with connect(fresh_target, ledger.query_target) as fresh:
        assert await fresh.withdraw(account_id, 200, request_id=request_id) == original
        await expect_failure(
            fresh.withdraw(account_id, 201, request_id=request_id), INVALID, "REQUEST_ID_REUSED"
        )
        transactions = await fresh.transactions(account_id, min_position=original.position)
    assert [t.amount_minor for t in transactions] == [500, 200]


async def _race_withdrawals(
    clients: list[LedgerClient], account_id: str, count: int, amount: int
) -> tuple[list[cmd.WithdrawFundsResponse], list[str]]:
    async def one(index: int) -> cmd.WithdrawFundsResponse | str:
        try:
            return await clients[index % len(clients)].withdraw(account_id, amount)
        except grpc.aio.AioRpcError as error:
            return str(error.code())

    outcomes = await asyncio.gather(*(one(i) for i in range(count)))
    return (
        [o for o in outcomes if isinstance(o, cmd.WithdrawFundsResponse)],
        [o for o in outcomes if isinstance(o, str)],
    )


async def _check_race(
    client: LedgerClient,
    account_id: str,
    start: int,
    amount: int,
    acknowledged: list[cmd.WithdrawFundsResponse],
    refused: list[str],
) -> None:
    """Balances only fall here, so one INSUFFICIENT_FUNDS refusal means the account was
    drained as far as it can be; every acknowledged withdrawal is in the log."""
    if str(FAILED_PRECONDITION) in refused:
        assert len(acknowledged) == start // amount
    balances = sorted((r.balance_minor for r in acknowledged), reverse=True)
    assert balances == [start - amount * k for k in range(1, len(acknowledged) + 1)]
    assert min(balances) >= 0
    last = max(r.position for r in acknowledged)
    transactions = await client.transactions(account_id, min_position=last)
    withdrawals = [t for t in transactions if t.kind == account_pb2.TRANSACTION_KIND_WITHDRAWAL]
    assert len(withdrawals) == len(acknowledged)
    assert {(t.version, t.position, t.balance_after_minor) for t in withdrawals} == {
        (r.version, r.position, r.balance_minor) for r in acknowledged
    }
    account = await client.account(account_id, min_position=last)
    assert account.balance_minor == start - amount * len(acknowledged)


async def test_fifty_concurrent_withdrawals_never_overdraw(client: LedgerClient) -> None:
    account_id = await funded(client, 1_000)
    acknowledged, refused = await _race_withdrawals([client], account_id, 50, 30)
    assert len(acknowledged) + len(refused) == 50
    # One command server serialises commands on a stream: nothing is left to chance.
    assert (len(acknowledged), set(refused)) == (33, {str(FAILED_PRECONDITION)})
    await _check_race(client, account_id, 1_000, 30, acknowledged, refused)


async def test_concurrent_withdrawals_through_two_command_servers(ledger: InProcessLedger) -> None:
    """Two command handlers with their own caches race on one stream: optimistic
    concurrency, not an in-process lock, keeps the balance from going negative."""
    second_target = await ledger.add_command_server()
    async with (
        connect(ledger.command_target, ledger.query_target) as first,
        connect(second_target, ledger.query_target) as second,
    ):
        account_id = await funded(first, 1_000)
        acknowledged, refused = await _race_withdrawals([first, second], account_id, 50, 30)
        assert len(acknowledged) + len(refused) == 50
        # Refusals are insufficient funds, or ABORTED for a conflict retries did not settle.
        assert set(refused) <= {str(FAILED_PRECONDITION), str(grpc.StatusCode.ABORTED)}
        await _check_race(first, account_id, 1_000, 30, acknowledged, refused)


async def test_timestamps_come_from_the_command_servers_clock(make_ledger: LedgerFactory) -> None:
    at = datetime(2030, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)
    ledger = await make_ledger(clock=lambda: at)
    async with connect(ledger.command_target, ledger.query_target) as client:
        account_id = await funded(client, 10)
        last = await client.withdraw(account_id, 10)
        account = await client.account(account_id, min_position=last.position)
        transactions = await client.transactions(account_id)
    assert account.opened_at.ToDatetime(UTC) == at
    assert account.updated_at.ToDatetime(UTC) == at
    assert {t.occurred_at.ToDatetime(UTC) for t in transactions} == {at}
