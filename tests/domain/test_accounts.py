"""The account aggregate's rules, as given(events) / when(command) / then(events | error)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given as for_all
from hypothesis import strategies as st

from ledger.domain.accounts import (
    Account,
    AccountClosed,
    AccountFrozen,
    AccountOpened,
    AccountStatus,
    AccountUnfrozen,
    CloseAccount,
    DepositFunds,
    FreezeAccount,
    FundsDeposited,
    FundsWithdrawn,
    OpenAccount,
    Reason,
    TransferDebited,
    TransferRefunded,
    TransferSettled,
    UnfreezeAccount,
    WithdrawFunds,
    accounts,
    decide,
    evolve,
)
from ledger.domain.values import INT64_MAX, MAX_AMOUNT_MINOR
from ledger.errors import AlreadyExists, NotFound, RuleViolated
from tests.given_when_then import given, given_state

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)
T2 = T0 + timedelta(minutes=2)
T3 = T0 + timedelta(minutes=3)
ID = "acc-1"

OPENED = AccountOpened(ID, "Ada Lovelace", "EUR", T0)
CLOSED = AccountClosed(ID, T2)
FROZEN = AccountFrozen(ID, "fraud check", T1)
UNFROZEN = AccountUnfrozen(ID, T2)


def deposited(amount: int, balance_after: int, at: datetime = T1) -> FundsDeposited:
    return FundsDeposited(ID, amount, "EUR", "salary", balance_after, at)


def withdrawn(amount: int, balance_after: int, at: datetime = T1) -> FundsWithdrawn:
    return FundsWithdrawn(ID, amount, "EUR", "rent", balance_after, at)


def deposit(amount: int, currency: str = "EUR", at: datetime = T3) -> DepositFunds:
    return DepositFunds(ID, amount, currency, "salary", at)


def withdraw(amount: int, currency: str = "EUR", at: datetime = T3) -> WithdrawFunds:
    return WithdrawFunds(ID, amount, currency, "rent", at)


# Open


def test_open_a_new_account() -> None:
    state = given().when(OpenAccount(ID, "Ada Lovelace", "EUR", T0)).then(OPENED)
    assert state == Account(ID, "Ada Lovelace", "EUR", 0, AccountStatus.OPEN)


def test_open_an_existing_account_is_already_exists() -> None:
    given(OPENED).when(OpenAccount(ID, "Someone Else", "USD", T1)).then_error(AlreadyExists)


def test_a_closed_account_id_is_never_reopened() -> None:
    given(OPENED, CLOSED).when(OpenAccount(ID, "Ada Lovelace", "EUR", T3)).then_error(AlreadyExists)


# Deposit


def test_deposit_into_a_new_account() -> None:
    state = given(OPENED).when(deposit(250)).then(FundsDeposited(ID, 250, "EUR", "salary", 250, T3))
    assert state is not None
    assert state.balance_minor == 250


def test_deposit_carries_the_balance_after_it() -> None:
    given(OPENED, deposited(100, 100), withdrawn(30, 70)).when(deposit(5)).then(
        FundsDeposited(ID, 5, "EUR", "salary", 75, T3)
    )


def test_deposit_into_an_unknown_account_is_not_found() -> None:
    given().when(deposit(1)).then_error(NotFound)


def test_deposit_into_a_closed_account_is_refused() -> None:
    given(OPENED, CLOSED).when(deposit(1)).then_error(RuleViolated, reason=Reason.ACCOUNT_CLOSED)


def test_deposit_in_another_currency_is_refused() -> None:
    given(OPENED).when(deposit(1, "USD")).then_error(RuleViolated, reason=Reason.CURRENCY_MISMATCH)


def test_deposit_up_to_the_int64_limit_is_accepted() -> None:
    near_limit = INT64_MAX - 5
    given(OPENED, deposited(near_limit, near_limit)).when(deposit(5)).then(
        FundsDeposited(ID, 5, "EUR", "salary", INT64_MAX, T3)
    )


def test_deposit_past_the_int64_limit_is_refused() -> None:
    near_limit = INT64_MAX - 5
    given(OPENED, deposited(near_limit, near_limit)).when(deposit(6)).then_error(
        RuleViolated, reason=Reason.BALANCE_LIMIT_EXCEEDED
    )


def test_deposit_on_a_full_account_is_refused() -> None:
    given(OPENED, deposited(INT64_MAX, INT64_MAX)).when(deposit(1)).then_error(
        RuleViolated, reason=Reason.BALANCE_LIMIT_EXCEEDED
    )


# Withdraw


def test_withdraw_carries_the_balance_after_it() -> None:
    state = (
        given(OPENED, deposited(100, 100))
        .when(withdraw(40))
        .then(FundsWithdrawn(ID, 40, "EUR", "rent", 60, T3))
    )
    assert state is not None
    assert state.balance_minor == 60


def test_withdraw_the_whole_balance() -> None:
    given(OPENED, deposited(100, 100)).when(withdraw(100)).then(
        FundsWithdrawn(ID, 100, "EUR", "rent", 0, T3)
    )


def test_withdraw_more_than_the_balance_is_insufficient_funds() -> None:
    given(OPENED, deposited(100, 100)).when(withdraw(101)).then_error(
        RuleViolated, reason=Reason.INSUFFICIENT_FUNDS
    )


def test_withdraw_from_an_empty_account_is_insufficient_funds() -> None:
    given(OPENED).when(withdraw(1)).then_error(RuleViolated, reason=Reason.INSUFFICIENT_FUNDS)


def test_withdraw_from_an_unknown_account_is_not_found() -> None:
    given().when(withdraw(1)).then_error(NotFound)


def test_withdraw_from_a_closed_account_is_refused() -> None:
    given(OPENED, CLOSED).when(withdraw(1)).then_error(RuleViolated, reason=Reason.ACCOUNT_CLOSED)


def test_withdraw_in_another_currency_is_refused() -> None:
    given(OPENED, deposited(100, 100)).when(withdraw(1, "GBP")).then_error(
        RuleViolated, reason=Reason.CURRENCY_MISMATCH
    )


def test_withdraw_from_a_frozen_account_is_refused() -> None:
    given(OPENED, deposited(100, 100), FROZEN).when(withdraw(1)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_FROZEN
    )


def test_withdraw_from_a_frozen_state_is_refused() -> None:
    frozen = Account(ID, "Ada Lovelace", "EUR", 100, AccountStatus.FROZEN)
    given_state(frozen).when(withdraw(1)).then_error(RuleViolated, reason=Reason.ACCOUNT_FROZEN)


def test_withdraw_after_an_unfreeze() -> None:
    given(OPENED, deposited(100, 100), FROZEN, UNFROZEN).when(withdraw(1)).then(
        FundsWithdrawn(ID, 1, "EUR", "rent", 99, T3)
    )


def test_a_closed_account_reports_closed_before_a_currency_mismatch() -> None:
    given(OPENED, CLOSED).when(withdraw(1, "USD")).then_error(
        RuleViolated, reason=Reason.ACCOUNT_CLOSED
    )


# Close


def test_close_an_empty_account() -> None:
    state = given(OPENED).when(CloseAccount(ID, T3)).then(AccountClosed(ID, T3))
    assert state is not None
    assert state.status is AccountStatus.CLOSED


def test_close_after_the_balance_went_back_to_zero() -> None:
    given(OPENED, deposited(100, 100), withdrawn(100, 0)).when(CloseAccount(ID, T3)).then(
        AccountClosed(ID, T3)
    )


def test_close_with_money_left_is_refused() -> None:
    given(OPENED, deposited(1, 1)).when(CloseAccount(ID, T3)).then_error(
        RuleViolated, reason=Reason.BALANCE_NOT_ZERO
    )


def test_close_an_unknown_account_is_not_found() -> None:
    given().when(CloseAccount(ID, T3)).then_error(NotFound)


def test_close_a_closed_account_is_refused() -> None:
    given(OPENED, CLOSED).when(CloseAccount(ID, T3)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_CLOSED
    )


def test_close_a_frozen_account_is_refused() -> None:
    given(OPENED, FROZEN).when(CloseAccount(ID, T3)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_FROZEN
    )


def test_close_with_a_transfer_pending_is_refused() -> None:
    # the money left, but the transfer may yet be refunded: the account must stay open
    debited = TransferDebited(ID, "t-1", "acc-2", 100, "EUR", "gift", 0, T1)
    given(OPENED, deposited(100, 100), debited).when(CloseAccount(ID, T3)).then_error(
        RuleViolated, reason=Reason.TRANSFER_PENDING
    )


def test_close_once_the_transfer_settled() -> None:
    debited = TransferDebited(ID, "t-1", "acc-2", 100, "EUR", "gift", 0, T1)
    settled = TransferSettled(ID, "t-1", T2)
    given(OPENED, deposited(100, 100), debited, settled).when(CloseAccount(ID, T3)).then(
        AccountClosed(ID, T3)
    )


def test_close_refused_while_a_refunded_transfer_left_money() -> None:
    debited = TransferDebited(ID, "t-1", "acc-2", 100, "EUR", "gift", 0, T1)
    refunded = TransferRefunded(ID, "t-1", "acc-2", 100, "EUR", "ACCOUNT_CLOSED", 100, T2)
    given(OPENED, deposited(100, 100), debited, refunded).when(CloseAccount(ID, T3)).then_error(
        RuleViolated, reason=Reason.BALANCE_NOT_ZERO
    )


# Freeze and unfreeze


def test_freeze_an_open_account() -> None:
    state = given(OPENED).when(FreezeAccount(ID, "fraud check", T1)).then(FROZEN)
    assert state is not None
    assert state.status is AccountStatus.FROZEN


def test_freeze_a_frozen_account_changes_nothing() -> None:
    given(OPENED, FROZEN).when(FreezeAccount(ID, "again", T3)).then()


def test_unfreeze_a_frozen_account() -> None:
    state = given(OPENED, FROZEN).when(UnfreezeAccount(ID, T2)).then(UNFROZEN)
    assert state is not None
    assert state.status is AccountStatus.OPEN


def test_unfreeze_an_open_account_changes_nothing() -> None:
    given(OPENED).when(UnfreezeAccount(ID, T3)).then()


def test_freeze_or_unfreeze_a_closed_account_is_refused() -> None:
    given(OPENED, CLOSED).when(FreezeAccount(ID, "late", T3)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_CLOSED
    )
    given(OPENED, CLOSED).when(UnfreezeAccount(ID, T3)).then_error(
        RuleViolated, reason=Reason.ACCOUNT_CLOSED
    )


def test_freeze_an_unknown_account_is_not_found() -> None:
    given().when(FreezeAccount(ID, "x", T3)).then_error(NotFound)
    given().when(UnfreezeAccount(ID, T3)).then_error(NotFound)


# Evolve


def test_evolve_takes_the_balance_from_the_events() -> None:
    state = accounts.fold(
        None, [OPENED, deposited(500, 500), withdrawn(120, 380), deposited(20, 400)]
    )
    assert state == Account(ID, "Ada Lovelace", "EUR", 400, AccountStatus.OPEN)


def test_errors_name_the_account() -> None:
    error = given(OPENED).when(withdraw(7)).then_error(RuleViolated)
    assert ID in error.message
    assert "7" in error.message


# Property: the folded balance is the sum of what was accepted, and never negative.

MOVES = st.lists(
    st.tuples(st.sampled_from(["deposit", "withdraw"]), st.integers(1, MAX_AMOUNT_MINOR)),
    max_size=40,
)


@for_all(MOVES)
def test_balance_is_accepted_deposits_minus_accepted_withdrawals(
    moves: list[tuple[str, int]],
) -> None:
    state = evolve(None, OPENED)
    deposits = withdrawals = 0
    for kind, amount in moves:
        assert state is not None
        before = state.balance_minor
        if kind == "deposit":
            (event,) = decide(state, deposit(amount))
            assert isinstance(event, FundsDeposited)
            deposits += amount
            assert event.balance_after_minor == before + amount
        elif amount > before:
            with pytest.raises(RuleViolated) as refused:
                decide(state, withdraw(amount))
            assert refused.value.reason == Reason.INSUFFICIENT_FUNDS
            continue
        else:
            (event,) = decide(state, withdraw(amount))
            assert isinstance(event, FundsWithdrawn)
            withdrawals += amount
            assert event.balance_after_minor == before - amount
        state = evolve(state, event)
        assert state is not None
        assert state.balance_minor >= 0
    assert state is not None
    assert state.balance_minor == deposits - withdrawals
