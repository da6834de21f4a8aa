"""TransferFunds' synchronous part on the real SQLite event store: refusals append
nothing anywhere, retries get the original answer, transfer ids are claimed once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger.application.command_handler import REQUEST_ID_REUSED, CommandHandler
from ledger.banking.views import codec
from ledger.domain import transfers
from ledger.domain.accounts import DebitTransfer, FreezeAccount, Reason, TransferDebited
from ledger.domain.transfers import RequestTransfer
from ledger.errors import AlreadyExists, InvalidArgument, LedgerError, NotFound, RuleViolated
from tests.transfers.bank import AT, Bank, sqlite_bank


@pytest.fixture
async def bank(tmp_path: Path) -> AsyncIterator[Bank]:
    async with sqlite_bank(tmp_path / "events.sqlite3") as opened:
        await opened.open("alice", 100)
        await opened.open("bob")
        await opened.open("dollars", currency="USD")
        yield opened


async def test_a_transfer_debits_the_source_and_claims_its_id(bank: Bank) -> None:
    accepted = await bank.transfer("alice", "bob", 30, transfer_id="t-1")

    alice = await bank.account("alice")
    assert (alice.balance_minor, alice.pending_transfers) == (70, frozenset({"t-1"}))
    log = await bank.log()
    assert [(r.stream, r.type) for r in log[-2:]] == [
        ("transfer-t-1", "V1.TransferRequested"),
        ("account-alice", "V1.TransferDebited"),
    ]
    assert accepted.transfer_id == "t-1"
    assert accepted.position == log[-1].position
    assert (await bank.account("bob")).balance_minor == 0  # the credit is asynchronous


@pytest.mark.parametrize(
    ("source", "destination", "amount", "currency", "error", "reason"),
    [
        ("alice", "bob", 101, "EUR", RuleViolated, Reason.INSUFFICIENT_FUNDS),
        ("alice", "nobody", 1, "EUR", NotFound, ""),
        ("nobody", "bob", 1, "EUR", NotFound, ""),
        ("alice", "dollars", 1, "EUR", RuleViolated, Reason.CURRENCY_MISMATCH),
        ("alice", "bob", 1, "USD", RuleViolated, Reason.CURRENCY_MISMATCH),
    ],
)
async def test_a_refused_transfer_appends_nothing(
    bank: Bank,
    source: str,
    destination: str,
    amount: int,
    currency: str,
    error: type[LedgerError],
    reason: str,
) -> None:
    before = await bank.log()
    with pytest.raises(error) as refused:
        await bank.transfer(source, destination, amount, currency=currency)
    assert refused.value.reason == reason
    assert await bank.log() == before


async def test_a_transfer_to_a_closed_account_is_refused_at_once(bank: Bank) -> None:
    await bank.close("bob")
    before = await bank.log()
    with pytest.raises(RuleViolated) as refused:
        await bank.transfer("alice", "bob", 1)
    assert refused.value.reason == Reason.ACCOUNT_CLOSED
    assert await bank.log() == before


async def test_a_frozen_source_pays_nothing(bank: Bank) -> None:
    await bank.run("alice", FreezeAccount("alice", "audit", AT))
    before = await bank.log()
    with pytest.raises(RuleViolated) as refused:
        await bank.transfer("alice", "bob", 1)
    assert refused.value.reason == Reason.ACCOUNT_FROZEN
    assert await bank.log() == before


async def test_a_frozen_destination_is_paid(bank: Bank) -> None:
    await bank.run("bob", FreezeAccount("bob", "audit", AT))
    await bank.transfer("alice", "bob", 1)
    assert (await bank.account("alice")).balance_minor == 99


async def test_a_retry_gets_the_original_answer_and_appends_nothing(bank: Bank) -> None:
    first = await bank.transfer("alice", "bob", 100, transfer_id="t-1", request_id="r-1")
    before = await bank.log()
    # Retried after the money left and the destination closed: the original answer all the same.
    await bank.close("bob")
    closed = await bank.log()
    again = await bank.transfer("alice", "bob", 100, transfer_id="t-1", request_id="r-1")
    assert again == first
    assert await bank.log() == closed
    assert len(closed) == len(before) + 1


async def test_a_transfer_id_belongs_to_one_request(bank: Bank) -> None:
    await bank.transfer("alice", "bob", 10, transfer_id="t-1", request_id="r-1")
    before = await bank.log()
    with pytest.raises(AlreadyExists):
        await bank.transfer("alice", "bob", 10, transfer_id="t-1", request_id="r-2")
    assert await bank.log() == before
    assert (await bank.account("alice")).balance_minor == 90


async def test_a_request_id_reused_for_another_transfer_is_refused(bank: Bank) -> None:
    await bank.transfer("alice", "bob", 10, request_id="r-1", fingerprint="first")
    before = await bank.log()
    with pytest.raises(InvalidArgument) as refused:
        await bank.transfer("alice", "bob", 20, request_id="r-1", fingerprint="second")
    assert refused.value.reason == REQUEST_ID_REUSED
    assert await bank.log() == before


async def test_a_claim_whose_debit_never_ran_is_completed_by_a_retry(bank: Bank) -> None:
    """As after a crash between the claim and the debit: the retry replays the claim,
    then debits."""
    claims = CommandHandler(bank.store, transfers.transfers, codec)
    claim = RequestTransfer("t-1", "alice", "bob", 20, "EUR", "test", AT)
    await claims.handle("t-1", claim, request_id="r-1", fingerprint="r-1")
    assert (await bank.account("alice")).balance_minor == 100

    retried = await bank.transfer("alice", "bob", 20, transfer_id="t-1", request_id="r-1")

    assert retried.transfer_id == "t-1"
    log = await bank.log()
    assert [r.type for r in log].count("V1.TransferRequested") == 1
    assert log[-1].type == "V1.TransferDebited"
    assert (await bank.account("alice")).balance_minor == 80


async def test_check_decides_without_appending(bank: Bank) -> None:
    before = await bank.log()
    debit = DebitTransfer("alice", "t-1", "bob", 5, "EUR", "", AT)
    (event,) = await bank.accounts.check("alice", debit)
    assert isinstance(event, TransferDebited)
    assert event.balance_after_minor == 95
    assert await bank.log() == before
