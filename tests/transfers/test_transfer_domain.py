"""Freezing and transfers on the account aggregate, and the transfer-id claim, as
given(events) / when(command) / then(events | error)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given as for_all
from hypothesis import strategies as st

from ledger.domain import transfers
from ledger.domain.accounts import (
    AccountClosed,
    AccountFrozen,
    AccountOpened,
    AccountStatus,
    AccountUnfrozen,
    CloseAccount,
    Command,
    CreditTransfer,
    DebitTransfer,
    DepositFunds,
    Event,
    FreezeAccount,
    FundsDeposited,
    FundsWithdrawn,
    Reason,
    RefundTransfer,
    SettleTransfer,
    State,
    TransferCredited,
    TransferCreditRejected,
    TransferDebited,
    TransferRefunded,
    TransferSettled,
    UnfreezeAccount,
    WithdrawFunds,
    accounts,
    decide,
)
from ledger.domain.transfers import RequestTransfer, TransferRequested
from ledger.domain.values import INT64_MAX, MAX_AMOUNT_MINOR, check_different_accounts
from ledger.errors import AlreadyExists, NotFound, RuleViolated
from tests.given_when_then import given, given_in

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)
T2 = T0 + timedelta(minutes=2)
T3 = T0 + timedelta(minutes=3)
ID = "acc-1"
OTHER = "acc-2"
TID = "t-1"

OPENED = AccountOpened(ID, "Ada Lovelace", "EUR", T0)
CLOSED = AccountClosed(ID, T2)
FROZEN = AccountFrozen(ID, "court order", T1)
UNFROZEN = AccountUnfrozen(ID, T2)


def deposited(balance: int) -> FundsDeposited:
    return FundsDeposited(ID, balance, "EUR", "salary", balance, T1)


def debit(amount: int, currency: str = "EUR", transfer_id: str = TID) -> DebitTransfer:
    return DebitTransfer(ID, transfer_id, OTHER, amount, currency, "rent", T3)


def debited(amount: int, balance_after: int, transfer_id: str = TID) -> TransferDebited:
    return TransferDebited(ID, transfer_id, OTHER, amount, "EUR", "rent", balance_after, T2)


def credit(amount: int, currency: str = "EUR") -> CreditTransfer:
    return CreditTransfer(ID, TID, OTHER, amount, currency, "rent", T3)


def credited(amount: int, balance_after: int) -> TransferCredited:
    return TransferCredited(ID, TID, OTHER, amount, "EUR", "rent", balance_after, T3)


def rejected(amount: int, reason: str, currency: str = "EUR") -> TransferCreditRejected:
    return TransferCreditRejected(ID, TID, OTHER, amount, currency, reason, T3)


def refund(amount: int, transfer_id: str = TID) -> RefundTransfer:
    return RefundTransfer(ID, transfer_id, OTHER, amount, "EUR", Reason.ACCOUNT_CLOSED, T3)


def refunded(amount: int, balance_after: int) -> TransferRefunded:
    return TransferRefunded(ID, TID, OTHER, amount, "EUR", Reason.ACCOUNT_CLOSED, balance_after, T3)


# Freeze and unfreeze


def test_freeze_an_open_account() -> None:
    state = given(OPENED).when(FreezeAccount(ID, "court order", T1)).then(FROZEN)
    assert state is not None
    assert state.status is AccountStatus.FROZEN


def test_freezing_a_frozen_account_changes_nothing() -> None:
    given(OPENED, FROZEN).when(FreezeAccount(ID, "again", T2)).then()


def test_freeze_a_closed_account_is_refused() -> None:
    given(OPENED, CLOSED).when(FreezeAccount(ID, "", T3)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_CLOSED
    )


def test_freeze_an_unknown_account_is_not_found() -> None:
    given().when(FreezeAccount(ID, "", T3)).then_error(NotFound)


def test_unfreeze_a_frozen_account() -> None:
    state = given(OPENED, FROZEN).when(UnfreezeAccount(ID, T2)).then(UNFROZEN)
    assert state is not None
    assert state.status is AccountStatus.OPEN


def test_unfreezing_an_open_account_changes_nothing() -> None:
    given(OPENED).when(UnfreezeAccount(ID, T2)).then()


def test_unfreeze_a_closed_account_is_refused() -> None:
    given(OPENED, CLOSED).when(UnfreezeAccount(ID, T3)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_CLOSED
    )


def test_a_frozen_account_accepts_deposits() -> None:
    given(OPENED, FROZEN).when(DepositFunds(ID, 5, "EUR", "gift", T3)).then(
        FundsDeposited(ID, 5, "EUR", "gift", 5, T3)
    )


def test_a_frozen_account_refuses_withdrawals() -> None:
    given(OPENED, deposited(100), FROZEN).when(WithdrawFunds(ID, 1, "EUR", "", T3)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_FROZEN
    )


def test_an_unfrozen_account_pays_again() -> None:
    given(OPENED, deposited(100), FROZEN, UNFROZEN).when(WithdrawFunds(ID, 1, "EUR", "", T3)).then(
        FundsWithdrawn(ID, 1, "EUR", "", 99, T3)
    )


def test_close_a_frozen_account_is_refused() -> None:
    given(OPENED, FROZEN).when(CloseAccount(ID, T3)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_FROZEN
    )


# Debit (the source's synchronous half)


def test_debit_takes_the_money_and_keeps_the_transfer_pending() -> None:
    state = (
        given(OPENED, deposited(100))
        .when(debit(30))
        .then(TransferDebited(ID, TID, OTHER, 30, "EUR", "rent", 70, T3))
    )
    assert state is not None
    assert state.balance_minor == 70
    assert state.pending_transfers == {TID}


def test_debit_the_whole_balance() -> None:
    given(OPENED, deposited(100)).when(debit(100)).then(
        TransferDebited(ID, TID, OTHER, 100, "EUR", "rent", 0, T3)
    )


def test_debit_more_than_the_balance_is_insufficient_funds() -> None:
    given(OPENED, deposited(100)).when(debit(101)).then_error(
        RuleViolated, reason=Reason.INSUFFICIENT_FUNDS
    )


def test_debit_a_frozen_account_is_refused() -> None:
    given(OPENED, deposited(100), FROZEN).when(debit(1)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_FROZEN
    )


def test_debit_a_closed_account_is_refused() -> None:
    given(OPENED, CLOSED).when(debit(1)).then_error(RuleViolated, reason=Reason.ACCOUNT_CLOSED)


def test_debit_in_another_currency_is_refused() -> None:
    given(OPENED, deposited(100)).when(debit(1, "USD")).then_error(
        RuleViolated, reason=Reason.CURRENCY_MISMATCH
    )


def test_debit_an_unknown_account_is_not_found() -> None:
    given().when(debit(1)).then_error(NotFound)


def test_close_with_a_transfer_pending_is_refused() -> None:
    given(OPENED, deposited(100), debited(100, 0)).when(CloseAccount(ID, T3)).then_error(
        RuleViolated, reason=Reason.TRANSFER_PENDING
    )


def test_close_once_the_transfer_settled() -> None:
    settled = TransferSettled(ID, TID, T3)
    given(OPENED, deposited(100), debited(100, 0), settled).when(CloseAccount(ID, T3)).then(
        AccountClosed(ID, T3)
    )


# Credit (the destination records the outcome, never raises for a business rule)


def test_credit_adds_the_money() -> None:
    state = given(OPENED, deposited(10)).when(credit(30)).then(credited(30, 40))
    assert state is not None
    assert state.balance_minor == 40


def test_credit_a_frozen_account_is_accepted() -> None:
    given(OPENED, FROZEN).when(credit(30)).then(credited(30, 30))


def test_credit_a_closed_account_is_rejected_not_raised() -> None:
    state = given(OPENED, CLOSED).when(credit(30)).then(rejected(30, Reason.ACCOUNT_CLOSED))
    assert state is not None
    assert state.balance_minor == 0


def test_credit_in_another_currency_is_rejected() -> None:
    given(OPENED).when(credit(30, "USD")).then(rejected(30, Reason.CURRENCY_MISMATCH, "USD"))


def test_credit_past_the_balance_limit_is_rejected() -> None:
    given(OPENED, deposited(INT64_MAX)).when(credit(1)).then(
        rejected(1, Reason.BALANCE_LIMIT_EXCEEDED)
    )


def test_credit_an_unknown_account_is_not_found() -> None:
    given().when(credit(1)).then_error(NotFound)


# Settle and refund (the source's last step; each happens once)


def test_settle_ends_the_pending_transfer() -> None:
    state = (
        given(OPENED, deposited(100), debited(30, 70))
        .when(SettleTransfer(ID, TID, T3))
        .then(TransferSettled(ID, TID, T3))
    )
    assert state is not None
    assert (state.balance_minor, state.pending_transfers) == (70, frozenset())


def test_settle_twice_changes_nothing() -> None:
    settled = TransferSettled(ID, TID, T3)
    given(OPENED, deposited(100), debited(30, 70), settled).when(SettleTransfer(ID, TID, T3)).then()


def test_settle_an_unknown_transfer_changes_nothing() -> None:
    given(OPENED).when(SettleTransfer(ID, "never-debited", T3)).then()


def test_refund_gives_the_money_back() -> None:
    state = given(OPENED, deposited(100), debited(30, 70)).when(refund(30)).then(refunded(30, 100))
    assert state is not None
    assert (state.balance_minor, state.pending_transfers) == (100, frozenset())


def test_refund_twice_changes_nothing() -> None:
    given(OPENED, deposited(100), debited(30, 70), refunded(30, 100)).when(refund(30)).then()


def test_refund_after_settling_changes_nothing() -> None:
    settled = TransferSettled(ID, TID, T3)
    given(OPENED, deposited(100), debited(30, 70), settled).when(refund(30)).then()


def test_refund_into_a_frozen_account_is_accepted() -> None:
    given(OPENED, deposited(100), debited(30, 70), FROZEN).when(refund(30)).then(refunded(30, 100))


def test_transfers_pend_independently() -> None:
    history = (OPENED, deposited(100), debited(30, 70, "t-a"), debited(20, 50, "t-b"))
    state = given(*history).when(SettleTransfer(ID, "t-a", T3)).then(TransferSettled(ID, "t-a", T3))
    assert state is not None
    assert state.pending_transfers == {"t-b"}


# The transfer-id claim


def request_transfer(transfer_id: str = TID) -> RequestTransfer:
    return RequestTransfer(transfer_id, ID, OTHER, 30, "EUR", "rent", T1)


def test_claim_a_new_transfer_id() -> None:
    given_in(transfers.transfers).when(request_transfer()).then(
        TransferRequested(TID, ID, OTHER, 30, "EUR", "rent", T1)
    )


def test_claim_a_taken_transfer_id_is_already_exists() -> None:
    taken = TransferRequested(TID, "someone", OTHER, 1, "EUR", "", T0)
    given_in(transfers.transfers, taken).when(request_transfer()).then_error(AlreadyExists)


def test_a_transfer_needs_two_different_accounts() -> None:
    assert check_different_accounts("a", "b") == []
    (violation,) = check_different_accounts("a", "a")
    assert violation.field == "to_account_id"


# Property: whatever the destination does, the two balances keep their sum, and the
# source's money comes back exactly when the destination refused it.

DESTINATIONS = st.sampled_from(["open", "frozen", "closed", "other-currency"])


@for_all(st.integers(1, MAX_AMOUNT_MINOR), st.integers(0, MAX_AMOUNT_MINOR), DESTINATIONS)
def test_a_transfer_conserves_money(amount: int, extra: int, destination: str) -> None:
    source = accounts.fold(None, [OPENED, deposited(amount + extra)])
    opened = AccountOpened(OTHER, "Bob", "USD" if destination == "other-currency" else "EUR", T0)
    histories: dict[str, list[Event]] = {
        "open": [opened],
        "frozen": [opened, AccountFrozen(OTHER, "", T0)],
        "closed": [opened, AccountClosed(OTHER, T0)],
        "other-currency": [opened],
    }
    target = accounts.fold(None, histories[destination])

    def step(state: State, command: Command) -> State:
        return accounts.fold(state, decide(state, command))

    source = step(source, debit(amount))
    target = step(target, CreditTransfer(OTHER, TID, ID, amount, "EUR", "", T3))
    assert target is not None
    assert source is not None
    if destination in ("open", "frozen"):
        source = step(source, SettleTransfer(ID, TID, T3))
        assert target.balance_minor == amount
    else:
        source = step(source, refund(amount))
        assert target.balance_minor == 0
    assert source is not None
    assert source.pending_transfers == frozenset()
    assert source.balance_minor + target.balance_minor == amount + extra
