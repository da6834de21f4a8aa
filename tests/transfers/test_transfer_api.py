"""TransferFunds, FreezeAccount, UnfreezeAccount, GetTransfer and ListTransfers through
the generated stubs, against the three real processes on the embedded stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from ledger.v1 import account_command_service_pb2 as cmd
from ledger.v1 import account_pb2, transfer_pb2
from ledger.v1 import account_query_service_pb2 as qry
from tests.support import CALL_TIMEOUT, LedgerClient, connect, expect_failure, new_id
from tests.support.processes import COMMAND_SERVER, Stack, run_to_exit
from tests.transfers.client import finished, funded, get_transfer, transfer

pytestmark = pytest.mark.e2e
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = Stack(tmp_path_factory.mktemp("transfers")).start()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[LedgerClient]:
    async with connect(stack.command_target, stack.query_target) as connected:
        yield connected


async def test_a_transfer_completes_and_shows_on_both_accounts(client: LedgerClient) -> None:
    alice, bob = await funded(client, 1000), await funded(client)

    sent = await transfer(client, alice, bob, 300)
    assert sent.status == transfer_pb2.TRANSFER_STATUS_PENDING
    assert uuid.UUID(sent.transfer_id)

    done = await finished(client, sent)
    assert done.status == transfer_pb2.TRANSFER_STATUS_COMPLETED
    assert (done.from_account_id, done.to_account_id, done.amount_minor, done.currency) == (
        alice,
        bob,
        300,
        "EUR",
    )
    assert (done.description, done.failure_reason) == ("rent", "")
    assert done.completed_at.ToDatetime() >= done.requested_at.ToDatetime()
    for account_id in (alice, bob):
        listed = await client.queries.ListTransfers(
            qry.ListTransfersRequest(account_id=account_id, min_position=done.position),
            timeout=CALL_TIMEOUT,
        )
        assert list(listed.transfers) == [done]

    out = (await client.transactions(alice, min_position=done.position))[-1]
    into = (await client.transactions(bob, min_position=done.position))[-1]
    assert (out.kind, out.amount_minor, out.balance_after_minor) == (
        account_pb2.TRANSACTION_KIND_TRANSFER_OUT,
        300,
        700,
    )
    assert (out.transfer_id, out.counterparty_account_id) == (sent.transfer_id, bob)
    assert (into.kind, into.balance_after_minor, into.counterparty_account_id) == (
        account_pb2.TRANSACTION_KIND_TRANSFER_IN,
        300,
        alice,
    )
    assert (await client.account(bob, min_position=done.position)).balance_minor == 300


async def test_a_retried_transfer_returns_the_first_answer(client: LedgerClient) -> None:
    alice, bob = await funded(client, 100), await funded(client)
    first = await transfer(client, alice, bob, 100, request_id="same-request-" + alice)
    again = await transfer(client, alice, bob, 100, request_id="same-request-" + alice)
    assert (again.transfer_id, again.position) == (first.transfer_id, first.position)
    await finished(client, first)
    assert (await client.account(alice)).balance_minor == 0


async def test_a_transfer_id_is_used_once(client: LedgerClient) -> None:
    alice, bob = await funded(client, 100), await funded(client)
    transfer_id = new_id("t")
    assert (await transfer(client, alice, bob, 10, transfer_id=transfer_id)).transfer_id == (
        transfer_id
    )
    await expect_failure(
        transfer(client, alice, bob, 10, transfer_id=transfer_id), grpc.StatusCode.ALREADY_EXISTS
    )


async def test_malformed_transfers_name_every_bad_field(client: LedgerClient) -> None:
    alice = await funded(client, 100)
    failure = await expect_failure(
        client.commands.TransferFunds(
            cmd.TransferFundsRequest(
                transfer_id="no spaces",
                from_account_id=alice,
                to_account_id=alice,
                amount_minor=0,
                currency="euro",
            ),
            timeout=CALL_TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(failure.violations) == {"transfer_id", "to_account_id", "amount_minor", "currency"}


async def test_refused_transfers_say_why(client: LedgerClient) -> None:
    alice, bob, dollars = (
        await funded(client, 100),
        await funded(client),
        await funded(client, 0, "USD"),
    )
    await expect_failure(
        transfer(client, alice, bob, 101), FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"
    )
    await expect_failure(
        transfer(client, alice, dollars, 1), FAILED_PRECONDITION, "CURRENCY_MISMATCH"
    )
    await expect_failure(transfer(client, alice, new_id(), 1), grpc.StatusCode.NOT_FOUND)
    closed = await client.close(bob)
    await expect_failure(transfer(client, alice, bob, 1), FAILED_PRECONDITION, "ACCOUNT_CLOSED")
    # Read once the views hold alice's deposit (logged before bob's closing): without
    # min_position the read may come before the projector, as it did under a full run.
    assert (await client.account(alice, min_position=closed.position)).balance_minor == 100


async def test_a_frozen_account_receives_but_does_not_pay(client: LedgerClient) -> None:
    alice, bob = await funded(client, 100), await funded(client, 100)
    frozen = await client.commands.FreezeAccount(
        cmd.FreezeAccountRequest(request_id=new_id("r"), account_id=alice, reason="audit"),
        timeout=CALL_TIMEOUT,
    )
    assert (frozen.account_id, frozen.version) == (alice, 2)
    again = await client.commands.FreezeAccount(
        cmd.FreezeAccountRequest(request_id=new_id("r"), account_id=alice),
        timeout=CALL_TIMEOUT,
    )
    assert (again.version, again.position) == (frozen.version, frozen.position)
    view = await client.account(alice, min_position=frozen.position)
    assert view.status == account_pb2.ACCOUNT_STATUS_FROZEN

    await expect_failure(client.withdraw(alice, 1), FAILED_PRECONDITION, "ACCOUNT_FROZEN")
    await expect_failure(transfer(client, alice, bob, 1), FAILED_PRECONDITION, "ACCOUNT_FROZEN")
    await expect_failure(client.close(alice), FAILED_PRECONDITION, "ACCOUNT_FROZEN")
    await client.deposit(alice, 5)
    incoming = await transfer(client, bob, alice, 10)
    assert (await finished(client, incoming)).status == (transfer_pb2.TRANSFER_STATUS_COMPLETED)

    thawed = await client.commands.UnfreezeAccount(
        cmd.UnfreezeAccountRequest(request_id=new_id("r"), account_id=alice),
        timeout=CALL_TIMEOUT,
    )
    view = await client.account(alice, min_position=thawed.position)
    assert (view.status, view.balance_minor) == (account_pb2.ACCOUNT_STATUS_OPEN, 115)
    await client.withdraw(alice, 115)


async def test_unknown_transfers_and_accounts_are_not_found(client: LedgerClient) -> None:
    await expect_failure(get_transfer(client, new_id("t")), grpc.StatusCode.NOT_FOUND)
    await expect_failure(
        client.queries.ListTransfers(
            qry.ListTransfersRequest(account_id=new_id()), timeout=CALL_TIMEOUT
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_failure(
        client.commands.FreezeAccount(
            cmd.FreezeAccountRequest(account_id=new_id()), timeout=CALL_TIMEOUT
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_list_transfers_pages_oldest_first(client: LedgerClient) -> None:
    alice, bob = await funded(client, 100), await funded(client)
    sent = [await transfer(client, alice, bob, n) for n in (1, 2, 3)]
    for each in sent:
        await finished(client, each)
    back = await transfer(client, bob, alice, 6)
    await finished(client, back)
    seen: list[str] = []
    token = ""
    while True:
        page = await client.queries.ListTransfers(
            qry.ListTransfersRequest(
                account_id=alice, page_size=2, page_token=token, min_position=back.position
            ),
            timeout=CALL_TIMEOUT,
        )
        assert len(page.transfers) <= 2
        seen.extend(t.transfer_id for t in page.transfers)
        token = page.next_page_token
        if not token:
            break
    assert seen == [s.transfer_id for s in [*sent, back]]


async def test_with_the_processor_off_a_transfer_waits_then_fails_on_a_closed_destination(
    tmp_path: Path,
) -> None:
    """LEDGER_TRANSFER_PROCESSOR=off leaves transfers pending; once a command server runs
    it again, a destination closed meanwhile refuses the credit and the source is refunded."""
    stack = Stack(tmp_path, extra_env={"LEDGER_TRANSFER_PROCESSOR": "off"}).start()
    try:
        async with connect(stack.command_target, stack.query_target) as client:
            alice, bob = await funded(client, 100), await funded(client)
            sent = await transfer(client, alice, bob, 60)
            pending = await get_transfer(client, sent.transfer_id, sent.position)
            assert pending.status == transfer_pb2.TRANSFER_STATUS_PENDING
            await expect_failure(client.close(alice), FAILED_PRECONDITION, "TRANSFER_PENDING")
            await client.close(bob)  # still empty: the credit has not happened

            stack[COMMAND_SERVER].env["LEDGER_TRANSFER_PROCESSOR"] = "on"
            stack[COMMAND_SERVER].restart()

            failed = await finished(client, sent)
            assert (failed.status, failed.failure_reason) == (
                transfer_pb2.TRANSFER_STATUS_FAILED,
                "ACCOUNT_CLOSED",
            )
            refund = (await client.transactions(alice, min_position=failed.position))[-1]
            assert (refund.kind, refund.amount_minor, refund.balance_after_minor) == (
                account_pb2.TRANSACTION_KIND_TRANSFER_REFUND,
                60,
                100,
            )
            assert refund.counterparty_account_id == bob
    finally:
        stack.close()


def test_a_malformed_processor_setting_stops_the_command_server(tmp_path: Path) -> None:
    env = Stack(tmp_path).env(LEDGER_TRANSFER_PROCESSOR="maybe")
    result = run_to_exit(COMMAND_SERVER, env, tmp_path / "logs")
    assert result.returncode == 2
    assert "LEDGER_TRANSFER_PROCESSOR" in result.stderr
