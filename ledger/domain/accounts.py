"""The account aggregate: commands, events, `decide` and `evolve`.

Events carry the balance after them, so a projection or a retried command never has
to recompute it, and the log alone answers "what was the balance then?".

A transfer touches two accounts, each through its own stream: the source is debited
(TransferDebited) and keeps the transfer pending; the destination then records the
credit's outcome, TransferCredited or TransferCreditRejected, once and for all; the
source finally settles (TransferSettled) or gets its money back (TransferRefunded).
The process manager in ledger.banking.transfer_saga drives those steps.
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
    TRANSFER_PENDING = "TRANSFER_PENDING"


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    owner_name: str
    currency: str
    balance_minor: int
    status: AccountStatus
    pending_transfers: frozenset[str] = frozenset()
    """Transfers debited here and not yet settled or refunded."""


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


@dataclass(frozen=True, slots=True)
class FreezeAccount:
    account_id: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class UnfreezeAccount:
    account_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class DebitTransfer:
    """On the source account: the synchronous half of a transfer."""

    account_id: str
    transfer_id: str
    to_account_id: str
    amount_minor: int
    currency: str
    description: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CreditTransfer:
    """On the destination: decides the credit, or records why it is refused."""

    account_id: str
    transfer_id: str
    from_account_id: str
    amount_minor: int
    currency: str
    description: str
    at: datetime


@dataclass(frozen=True, slots=True)
class SettleTransfer:
    """On the source, once the destination was credited."""

    account_id: str
    transfer_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class RefundTransfer:
    """On the source, once the destination refused the credit."""

    account_id: str
    transfer_id: str
    to_account_id: str
    amount_minor: int
    currency: str
    reason: str
    at: datetime


Command = (
    OpenAccount
    | DepositFunds
    | WithdrawFunds
    | CloseAccount
    | FreezeAccount
    | UnfreezeAccount
    | DebitTransfer
    | CreditTransfer
    | SettleTransfer
    | RefundTransfer
)

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


@dataclass(frozen=True, slots=True)
class AccountFrozen:
    account_id: str
    reason: str
    frozen_at: datetime


@dataclass(frozen=True, slots=True)
class AccountUnfrozen:
    account_id: str
    unfrozen_at: datetime


@dataclass(frozen=True, slots=True)
class TransferDebited:
    account_id: str
    transfer_id: str
    to_account_id: str
    amount_minor: int
    currency: str
    description: str
    balance_after_minor: int
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class TransferCredited:
    account_id: str
    transfer_id: str
    from_account_id: str
    amount_minor: int
    currency: str
    description: str
    balance_after_minor: int
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class TransferCreditRejected:
    """The destination refused the credit: no balance change, a refund is due."""

    account_id: str
    transfer_id: str
    from_account_id: str
    amount_minor: int
    currency: str
    reason: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class TransferSettled:
    account_id: str
    transfer_id: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class TransferRefunded:
    account_id: str
    transfer_id: str
    to_account_id: str
    amount_minor: int
    currency: str
    reason: str
    balance_after_minor: int
    occurred_at: datetime


Event = (
    AccountOpened
    | FundsDeposited
    | FundsWithdrawn
    | AccountClosed
    | AccountFrozen
    | AccountUnfrozen
    | TransferDebited
    | TransferCredited
    | TransferCreditRejected
    | TransferSettled
    | TransferRefunded
)

EVENT_TYPES: dict[str, type[Event]] = {
    "V1.AccountOpened": AccountOpened,
    "V1.FundsDeposited": FundsDeposited,
    "V1.FundsWithdrawn": FundsWithdrawn,
    "V1.AccountClosed": AccountClosed,
    "V1.AccountFrozen": AccountFrozen,
    "V1.AccountUnfrozen": AccountUnfrozen,
    "V1.TransferDebited": TransferDebited,
    "V1.TransferCredited": TransferCredited,
    "V1.TransferCreditRejected": TransferCreditRejected,
    "V1.TransferSettled": TransferSettled,
    "V1.TransferRefunded": TransferRefunded,
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


def must_have_no_pending_transfers(account: Account) -> None:
    if account.pending_transfers:
        raise RuleViolated(
            f"account {account.account_id!r} has {len(account.pending_transfers)} transfer(s)"
            " not yet credited or refunded",
            reason=Reason.TRANSFER_PENDING,
        )


def must_accept(account: Account, currency: str, amount_minor: int) -> None:
    """Money may come in: a deposit, or a transfer's credit."""
    must_not_be_closed(account)
    must_match_currency(account, currency)
    must_stay_within_limit(account, amount_minor)


def must_allow_payment(account: Account, currency: str, amount_minor: int) -> None:
    """Money may go out: a withdrawal, or a transfer's debit."""
    must_not_be_closed(account)
    must_not_be_frozen(account)
    must_match_currency(account, currency)
    must_cover(account, amount_minor)


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
            must_accept(account, command.currency, command.amount_minor)
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
            must_allow_payment(account, command.currency, command.amount_minor)
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
            must_not_be_frozen(account)
            must_have_no_pending_transfers(account)
            must_be_empty(account)
            return [AccountClosed(command.account_id, command.at)]
        case FreezeAccount():
            account = must_exist(state, command.account_id)
            must_not_be_closed(account)
            if account.status is AccountStatus.FROZEN:
                return []
            return [AccountFrozen(command.account_id, command.reason, command.at)]
        case UnfreezeAccount():
            account = must_exist(state, command.account_id)
            must_not_be_closed(account)
            if account.status is not AccountStatus.FROZEN:
                return []
            return [AccountUnfrozen(command.account_id, command.at)]
        case DebitTransfer():
            return [_debit(must_exist(state, command.account_id), command)]
        case CreditTransfer():
            return [_credit(must_exist(state, command.account_id), command)]
        case SettleTransfer():
            account = must_exist(state, command.account_id)
            if command.transfer_id not in account.pending_transfers:
                return []  # settled or refunded already
            return [TransferSettled(command.account_id, command.transfer_id, command.at)]
        case RefundTransfer():
            account = must_exist(state, command.account_id)
            if command.transfer_id not in account.pending_transfers:
                return []  # settled or refunded already
            return [
                TransferRefunded(
                    command.account_id,
                    command.transfer_id,
                    command.to_account_id,
                    command.amount_minor,
                    command.currency,
                    command.reason,
                    account.balance_minor + command.amount_minor,
                    command.at,
                )
            ]


def _debit(account: Account, command: DebitTransfer) -> TransferDebited:
    must_allow_payment(account, command.currency, command.amount_minor)
    return TransferDebited(
        command.account_id,
        command.transfer_id,
        command.to_account_id,
        command.amount_minor,
        command.currency,
        command.description,
        account.balance_minor - command.amount_minor,
        command.at,
    )


def _credit(account: Account, command: CreditTransfer) -> TransferCredited | TransferCreditRejected:
    """A refusal is recorded, not raised: the source is owed a refund either way."""
    try:
        must_accept(account, command.currency, command.amount_minor)
    except RuleViolated as refusal:
        return TransferCreditRejected(
            command.account_id,
            command.transfer_id,
            command.from_account_id,
            command.amount_minor,
            command.currency,
            refusal.reason,
            command.at,
        )
    return TransferCredited(
        command.account_id,
        command.transfer_id,
        command.from_account_id,
        command.amount_minor,
        command.currency,
        command.description,
        account.balance_minor + command.amount_minor,
        command.at,
    )


def evolve(state: State, event: Event) -> State:
    match event:
        case AccountOpened():
            return Account(
                event.account_id, event.owner_name, event.currency, 0, AccountStatus.OPEN
            )
        case FundsDeposited() | FundsWithdrawn() | TransferCredited():
            account = must_exist(state, event.account_id)
            return replace(account, balance_minor=event.balance_after_minor)
        case AccountClosed():
            account = must_exist(state, event.account_id)
            return replace(account, status=AccountStatus.CLOSED)
        case AccountFrozen():
            account = must_exist(state, event.account_id)
            return replace(account, status=AccountStatus.FROZEN)
        case AccountUnfrozen():
            account = must_exist(state, event.account_id)
            return replace(account, status=AccountStatus.OPEN)
        case TransferDebited():
            account = must_exist(state, event.account_id)
            return replace(
                account,
                balance_minor=event.balance_after_minor,
                pending_transfers=account.pending_transfers | {event.transfer_id},
            )
        case TransferCreditRejected():
            return must_exist(state, event.account_id)
        case TransferSettled():
            account = must_exist(state, event.account_id)
            return replace(
                account, pending_transfers=account.pending_transfers - {event.transfer_id}
            )
        case TransferRefunded():
            account = must_exist(state, event.account_id)
            return replace(
                account,
                balance_minor=event.balance_after_minor,
                pending_transfers=account.pending_transfers - {event.transfer_id},
            )


accounts: Decider[State, Command, Event] = Decider(
    category="account", initial_state=None, decide=decide, evolve=evolve
)
