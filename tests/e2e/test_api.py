"""The API contract against the three real processes on one shared stack: status codes
with rich details, idempotency, concurrency, read-your-writes, pagination."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ledger.v1 import account_command_service_pb2 as cmd
from ledger.v1 import account_pb2
from ledger.v1 import account_query_service_pb2 as qry
from tests.support import LedgerClient, connect, expect_failure, new_id, new_request_id
from tests.support.processes import COMMAND_SERVER, Stack

pytestmark = pytest.mark.e2e

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
OPEN, CLOSED = account_pb2.ACCOUNT_STATUS_OPEN, account_pb2.ACCOUNT_STATUS_CLOSED


async def test_a_full_account_lifecycle(client: LedgerClient) -> None:
    account_id = new_id()
    opened = await client.open(account_id, owner_name="Grace Hopper", currency="USD")
    deposited = await client.deposit(account_id, 10_000, currency="USD", description="pay")
    withdrawn = await client.withdraw(account_id, 10_000, currency="USD", description="rent")
    closed = await client.close(account_id)
    assert [r.version for r in (opened, deposited, withdrawn, closed)] == [0, 1, 2, 3]
    assert (deposited.balance_minor, withdrawn.balance_minor) == (10_000, 0)

    account = await client.account(account_id, min_position=closed.position)
    assert (account.owner_name, account.currency, account.status) == ("Grace Hopper", "USD", CLOSED)
    assert (account.balance_minor, account.version, account.position) == (0, 3, closed.position)
    transactions = await client.transactions(account_id, min_position=closed.position)
    assert [
        (t.kind, t.amount_minor, t.balance_after_minor, t.description) for t in transactions
    ] == [
        (account_pb2.TRANSACTION_KIND_DEPOSIT, 10_000, 10_000, "pay"),
        (account_pb2.TRANSACTION_KIND_WITHDRAWAL, 10_000, 0, "rent"),
    ]


async def test_invalid_commands_are_invalid_argument_with_field_violations_and_change_nothing(
    client: LedgerClient,
) -> None:
    account_id = new_id()
    await client.open(account_id)
    funded = await client.deposit(account_id, 500)

    request_id = new_request_id()
    failure = await expect_failure(
        client.commands.WithdrawFunds(
            cmd.WithdrawFundsRequest(
                request_id=request_id,
                account_id=account_id,
                amount_minor=0,
                currency="euro",
                description="d" * 501,
            )
        ),
        INVALID,
    )
    assert set(failure.violations) == {"amount_minor", "currency", "description"}
    failure = await expect_failure(client.open("not valid!", owner_name=""), INVALID)
    assert set(failure.violations) == {"account_id", "owner_name"}
    failure = await expect_failure(client.deposit(account_id, 10**15 + 1), INVALID)
    assert set(failure.violations) == {"amount_minor"}

    # Nothing changed: the next command is the next version, the request id is still free.
    after = await client.deposit(account_id, 1, request_id=request_id)
    assert (after.version, after.balance_minor) == (funded.version + 1, 501)
    account = await client.account(account_id, min_position=after.position)
    assert (account.balance_minor, account.version) == (501, 2)
    await expect_failure(
        client.account("not valid!", min_position=after.position), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_failure(
        client.account(new_id(), min_position=after.position), grpc.StatusCode.NOT_FOUND
    )


async def test_not_found_already_exists_and_failed_preconditions(client: LedgerClient) -> None:
    missing = new_id()
    await expect_failure(client.deposit(missing, 1), grpc.StatusCode.NOT_FOUND)
    await expect_failure(client.withdraw(missing, 1), grpc.StatusCode.NOT_FOUND)
    await expect_failure(client.close(missing), grpc.StatusCode.NOT_FOUND)

    account_id = new_id()
    await client.open(account_id, currency="EUR")
    await expect_failure(client.open(account_id), grpc.StatusCode.ALREADY_EXISTS)
    await client.deposit(account_id, 100)
    await expect_failure(
        client.withdraw(account_id, 101), FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"
    )
    await expect_failure(
        client.deposit(account_id, 1, currency="CHF"), FAILED_PRECONDITION, "CURRENCY_MISMATCH"
    )
    await expect_failure(client.close(account_id), FAILED_PRECONDITION, "BALANCE_NOT_ZERO")
    await client.withdraw(account_id, 100)
    closed = await client.close(account_id)
    await expect_failure(client.deposit(account_id, 1), FAILED_PRECONDITION, "ACCOUNT_CLOSED")
    await expect_failure(client.close(account_id), FAILED_PRECONDITION, "ACCOUNT_CLOSED")
    assert closed.version == 3
    account = await client.account(account_id, min_position=closed.position)
    assert (account.version, account.status) == (3, CLOSED)


async def test_a_stale_expected_version_is_aborted(client: LedgerClient) -> None:
    account_id = new_id()
    await client.open(account_id)
    await client.deposit(account_id, 100, expected_version=0)
    await expect_failure(
        client.deposit(account_id, 100, expected_version=0),
        grpc.StatusCode.ABORTED,
        "WRONG_EXPECTED_VERSION",
    )
    current = await client.withdraw(account_id, 40, expected_version=1)
    assert (current.version, current.balance_minor) == (2, 60)


async def test_retries_return_the_original_and_reused_request_ids_are_refused(
    client: LedgerClient,
) -> None:
    account_id = new_id()
    request_id = new_request_id()
    await client.open(account_id)
    original = await client.deposit(account_id, 700, request_id=request_id, description="gift")
    await client.withdraw(account_id, 200)
    retried = await client.deposit(account_id, 700, request_id=request_id, description="gift")
    assert retried == original

    for reuse in (
        client.deposit(account_id, 701, request_id=request_id, description="gift"),
        client.withdraw(account_id, 700, request_id=request_id, description="gift"),
    ):
        failure = await expect_failure(reuse, INVALID, "REQUEST_ID_REUSED")
        assert "request_id" in failure.violations

    last = await client.deposit(account_id, 1)
    transactions = await client.transactions(account_id, min_position=last.position)
    assert [t.amount_minor for t in transactions] == [700, 200, 1]
    assert last.balance_minor == 501


async def test_fifty_concurrent_withdrawals_never_overdraw_and_all_are_logged(
    client: LedgerClient,
) -> None:
    account_id = new_id()
    await client.open(account_id)
    await client.deposit(account_id, 1_000)

    async def withdraw() -> cmd.WithdrawFundsResponse | grpc.StatusCode:
        try:
            return await client.withdraw(account_id, 30)
        except grpc.aio.AioRpcError as error:
            return error.code()

    outcomes = await asyncio.gather(*(withdraw() for _ in range(50)))
    acknowledged = [o for o in outcomes if isinstance(o, cmd.WithdrawFundsResponse)]
    refused = [o for o in outcomes if not isinstance(o, cmd.WithdrawFundsResponse)]
    assert len(acknowledged) == 33
    assert set(refused) == {FAILED_PRECONDITION}
    assert sorted(r.balance_minor for r in acknowledged) == [
        1_000 - 30 * k for k in range(33, 0, -1)
    ]

    last = max(r.position for r in acknowledged)
    transactions = await client.transactions(account_id, min_position=last, page_size=7)
    withdrawals = transactions[1:]
    assert {(t.version, t.position, t.balance_after_minor) for t in withdrawals} == {
        (r.version, r.position, r.balance_minor) for r in acknowledged
    }
    assert len(withdrawals) == 33
    assert (await client.account(account_id, min_position=last)).balance_minor == 10


async def test_withdrawals_racing_through_two_command_server_processes(stack: Stack) -> None:
    """Two command_server processes on one event log: optimistic concurrency between
    processes still never overdraws, and every acknowledged withdrawal is logged."""
    second = stack.add("command_server_2", COMMAND_SERVER)
    await asyncio.to_thread(second.start)
    try:
        async with (
            connect(stack.command_target, stack.query_target) as first,
            connect(second.target, stack.query_target) as other,
        ):
            account_id = new_id()
            await first.open(account_id)
            await first.deposit(account_id, 1_000)
            clients = [first, other]

            async def withdraw(index: int) -> cmd.WithdrawFundsResponse | grpc.StatusCode:
                try:
                    return await clients[index % 2].withdraw(account_id, 30)
                except grpc.aio.AioRpcError as error:
                    return error.code()

            outcomes = await asyncio.gather(*(withdraw(i) for i in range(50)))
            acknowledged = [o for o in outcomes if isinstance(o, cmd.WithdrawFundsResponse)]
            refused = [o for o in outcomes if not isinstance(o, cmd.WithdrawFundsResponse)]
            # ABORTED is allowed: a conflict that bounded retries could not settle.
            assert set(refused) <= {FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
            if FAILED_PRECONDITION in refused:  # balances only fall: drained for good
                assert len(acknowledged) == 33
            balances = sorted((r.balance_minor for r in acknowledged), reverse=True)
            assert balances == [1_000 - 30 * k for k in range(1, len(acknowledged) + 1)]
            last = max(r.position for r in acknowledged)
            transactions = await first.transactions(account_id, min_position=last)
            assert {(t.version, t.position) for t in transactions[1:]} == {
                (r.version, r.position) for r in acknowledged
            }
    finally:
        await asyncio.to_thread(second.stop)


async def test_read_your_writes_with_min_position_and_no_sleep(client: LedgerClient) -> None:
    account_id = new_id()
    opened = await client.open(account_id)
    assert (await client.account(account_id, min_position=opened.position)).version == 0
    for n in range(1, 21):
        response: cmd.DepositFundsResponse | cmd.WithdrawFundsResponse
        if n % 4 == 0:
            response = await client.withdraw(account_id, n)
        else:
            response = await client.deposit(account_id, 10 * n)
        account = await client.account(account_id, min_position=response.position)
        assert (account.balance_minor, account.version, account.position) == (
            response.balance_minor,
            response.version,
            response.position,
        )
        transactions = await client.transactions(account_id, min_position=response.position)
        assert (len(transactions), transactions[-1].position) == (n, response.position)


async def test_min_position_beyond_the_log_is_projection_behind_before_the_deadline(
    client: LedgerClient,
) -> None:
    opened = await client.open()
    failure = await expect_failure(
        client.account(opened.account_id, min_position=opened.position + 10**9, deadline=1.0),
        grpc.StatusCode.UNAVAILABLE,
        "PROJECTION_BEHIND",
    )
    assert failure.message
    await expect_failure(
        client.queries.ListAccounts(
            qry.ListAccountsRequest(min_position=opened.position + 10**9), timeout=1.0
        ),
        grpc.StatusCode.UNAVAILABLE,
        "PROJECTION_BEHIND",
    )


async def test_list_accounts_pages_with_owner_and_status_filters(client: LedgerClient) -> None:
    owner = f"Owner {new_id()}"
    ids = sorted(f"{new_id('pg')}" for _ in range(5))
    for account_id in ids:
        await client.open(account_id, owner_name=owner)
    await client.open(owner_name=f"Someone else {new_id()}")
    closed = await client.close(ids[1])

    first = await client.queries.ListAccounts(
        qry.ListAccountsRequest(owner_name=owner, page_size=2, min_position=closed.position)
    )
    second = await client.queries.ListAccounts(
        qry.ListAccountsRequest(owner_name=owner, page_size=2, page_token=first.next_page_token)
    )
    third = await client.queries.ListAccounts(
        qry.ListAccountsRequest(owner_name=owner, page_size=2, page_token=second.next_page_token)
    )
    pages = [[a.account_id for a in p.accounts] for p in (first, second, third)]
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    assert third.next_page_token == ""

    open_ids = [
        a.account_id for a in await client.accounts(owner_name=owner, status=OPEN, page_size=1)
    ]
    closed_ids = [a.account_id for a in await client.accounts(owner_name=owner, status=CLOSED)]
    assert (open_ids, closed_ids) == ([i for i in ids if i != ids[1]], [ids[1]])


async def test_list_transactions_pages_oldest_first(client: LedgerClient) -> None:
    account_id = new_id()
    await client.open(account_id)
    responses = [await client.deposit(account_id, n, description=f"#{n}") for n in range(1, 12)]
    transactions = await client.transactions(
        account_id, min_position=responses[-1].position, page_size=4
    )
    assert [t.description for t in transactions] == [f"#{n}" for n in range(1, 12)]
    assert [(t.version, t.position) for t in transactions] == [
        (r.version, r.position) for r in responses
    ]


async def test_bad_page_tokens_and_sizes_are_invalid_argument(client: LedgerClient) -> None:
    opened = await client.open()
    for request, field in (
        (qry.ListAccountsRequest(page_token="definitely-not-a-token"), "page_token"),
        (qry.ListAccountsRequest(page_size=1001), "page_size"),
    ):
        failure = await expect_failure(client.queries.ListAccounts(request), INVALID)
        assert set(failure.violations) == {field}
    failure = await expect_failure(
        client.queries.ListTransactions(
            qry.ListTransactionsRequest(
                account_id=opened.account_id, page_token="%%%", min_position=opened.position
            )
        ),
        INVALID,
    )
    assert set(failure.violations) == {"page_token"}
