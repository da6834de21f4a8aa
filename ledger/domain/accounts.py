"""The account aggregate: commands, events, `decide` and `evolve`.

Events carry the balance after them, so a projection or a retried command never has
to recompute it, and the log alone answers "what was the balance then?".
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from ledger.application.decider import Decider
from ledger.domain.values import INT64_MAX
from ledger.errors import AlreadyExists, NotFound, RuleViolated


class AccountStatus(enum.Enum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"
    FROZEN = "FROZEN"


class Reason:
    """ErrorInfo.reason values clients can switch on."""

    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"
    ACCOUNT_FROZEN = "ACCOUNT_FROZEN"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    BALANCE_NOT_ZERO = "BALANCE_NOT_ZERO"
    BALANCE_LIMIT_EXCEEDED = "BALANCE_LIMIT_EXCEEDED"


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    owner_name: str
    currency: str
    balance_minor: int
    status: AccountStatus


State = Account | None

# Commands


@dataclass(frozen=True, slots=True)
class OpenAccount:
    account_id: str
    owner_name: str
    currency: str
    at: datetime


@dataclass(frozen=True, slots=True)
class DepositFunds:
    account_id: str
    amount_minor: int
    currency: str
    description: str
    at: datetime


@dataclass(frozen=True, slots=True)
class WithdrawFunds:
    account_id: str
    amount_minor: int
    currency: str
    description: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CloseAccount:
    account_id: str
    at: datetime


Command = OpenAccount | DepositFunds | WithdrawFunds | CloseAccount

# Events (past tense, versioned by their registered type name)


@dataclass(frozen=True, slots=True)
class AccountOpened:
    account_id: str
    owner_name: str
    currency: str
    opened_at: datetime


@dataclass(frozen=True, slots=True)
class FundsDeposited:
    account_id: str
    amount_minor: int
    currency: str
    description: str
    balance_after_minor: int
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class FundsWithdrawn:
    account_id: str
    amount_minor: int
    currency: str
    description: str
    balance_after_minor: int
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class AccountClosed:
    account_id: str
    closed_at: datetime


Event = AccountOpened | FundsDeposited | FundsWithdrawn | AccountClosed

EVENT_TYPES: dict[str, type[Event]] = {
    "V1.AccountOpened": AccountOpened,
    "V1.FundsDeposited": FundsDeposited,
    "V1.FundsWithdrawn": FundsWithdrawn,
    "V1.AccountClosed": AccountClosed,
}

# Invariants


def must_exist(state: State, account_id: str) -> Account:
    if state is None:
        raise NotFound(f"account {account_id!r} does not exist")
    return state


def must_not_be_closed(account: Account) -> None:
    if account.status is AccountStatus.CLOSED:
        raise RuleViolated(
            f"account {account.account_id!r} is closed", reason=Reason.ACCOUNT_CLOSED
        )


def must_not_be_frozen(account: Account) -> None:
    if account.status is AccountStatus.FROZEN:
        raise RuleViolated(
            f"account {account.account_id!r} is frozen", reason=Reason.ACCOUNT_FROZEN
        )


def must_match_currency(account: Account, currency: str) -> None:
    if currency != account.currency:
        raise RuleViolated(
            f"account {account.account_id!r} holds {account.currency}, not {currency}",
            reason=Reason.CURRENCY_MISMATCH,
        )


def must_cover(account: Account, amount_minor: int) -> None:
    if account.balance_minor < amount_minor:
        raise RuleViolated(
            f"account {account.account_id!r} has {account.balance_minor} minor units,"
            f" {amount_minor} requested",
            reason=Reason.INSUFFICIENT_FUNDS,
        )


def must_stay_within_limit(account: Account, amount_minor: int) -> None:
    if account.balance_minor + amount_minor > INT64_MAX:
        raise RuleViolated(
            f"account {account.account_id!r} cannot hold more than {INT64_MAX} minor units",
            reason=Reason.BALANCE_LIMIT_EXCEEDED,
        )


def must_be_empty(account: Account) -> None:
    if account.balance_minor != 0:
        raise RuleViolated(
            f"account {account.account_id!r} still holds {account.balance_minor} minor units",
            reason=Reason.BALANCE_NOT_ZERO,
        )


# Decide and evolve


def decide(state: State, command: Command) -> Sequence[Event]:
    match command:
        case OpenAccount():
            if state is not None:
                raise AlreadyExists(f"account {command.account_id!r} already exists")
            return [
                AccountOpened(command.account_id, command.owner_name, command.currency, command.at)
            ]
        case DepositFunds():
            account = must_exist(state, command.account_id)
            must_not_be_closed(account)
            must_match_currency(account, command.currency)
            must_stay_within_limit(account, command.amount_minor)
            balance = account.balance_minor + command.amount_minor
            return [
                FundsDeposited(
                    command.account_id,
                    command.amount_minor,
                    command.currency,
                    command.description,
                    balance,
                    command.at,
                )
            ]
        case WithdrawFunds():
            account = must_exist(state, command.account_id)
            must_not_be_closed(account)
            must_not_be_frozen(account)
            must_match_currency(account, command.currency)
            must_cover(account, command.amount_minor)
            balance = account.balance_minor - command.amount_minor
            return [
                FundsWithdrawn(
                    command.account_id,
                    command.amount_minor,
                    command.currency,
                    command.description,
                    balance,
                    command.at,
                )
            ]
        case CloseAccount():
            account = must_exist(state, command.account_id)
            must_not_be_closed(account)
            must_be_empty(account)
            return [AccountClosed(command.account_id, command.at)]


def evolve(state: State, event: Event) -> State:
    match event:
        case AccountOpened():
            return Account(
                event.account_id, event.owner_name, event.currency, 0, AccountStatus.OPEN
            )
        case FundsDeposited() | FundsWithdrawn():
            account = must_exist(state, event.account_id)
            return replace(account, balance_minor=event.balance_after_minor)
        case AccountClosed():
            account = must_exist(state, event.account_id)
            return replace(account, status=AccountStatus.CLOSED)


accounts: Decider[State, Command, Event] = Decider(
    category="account", initial_state=None, decide=decide, evolve=evolve
)
