"""The banking read model: collection names, indexes, and the `On<Event>` projections."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from ledger.domain.accounts import (
    EVENT_TYPES,
    AccountClosed,
    AccountOpened,
    AccountStatus,
    FundsDeposited,
    FundsWithdrawn,
)
from ledger.eventstore.codec import EventCodec
from ledger.eventstore.port import RecordedEvent
from ledger.projection import Projection
from ledger.views.port import KEY, Collection, Index, Upsert

ACCOUNTS = "accounts"
TRANSACTIONS = "transactions"

COLLECTIONS = (
    Collection(ACCOUNTS, (Index(("owner_name", KEY)), Index(("status", KEY)))),
    Collection(TRANSACTIONS, (Index(("account_id", "version")),)),
)

codec = EventCodec(EVENT_TYPES)
projection = Projection(
    name="banking", version=1, codec=codec, categories=("account",), collections=COLLECTIONS
)


def timestamp(at: datetime) -> str:
    """ISO-8601 in UTC: readable in any store and orderable as text."""
    return at.isoformat()


def _account_change(key: str, r: RecordedEvent, at: datetime, **fields: object) -> Upsert:
    return Upsert(
        ACCOUNTS,
        key,
        {**fields, "version": r.version, "position": r.position, "updated_at": timestamp(at)},  # type: ignore[dict-item]
        r.position,
    )


def _transaction(e: FundsDeposited | FundsWithdrawn, r: RecordedEvent, kind: str) -> Upsert:
    transaction_id = str(r.event_id)
    return Upsert(
        TRANSACTIONS,
        transaction_id,
        {
            "transaction_id": transaction_id,
            "account_id": e.account_id,
            "kind": kind,
            "amount_minor": e.amount_minor,
            "balance_after_minor": e.balance_after_minor,
            "description": e.description,
            "occurred_at": timestamp(e.occurred_at),
            "version": r.version,
            "position": r.position,
        },
        r.position,
    )


@projection.on(AccountOpened)
def on_account_opened(e: AccountOpened, r: RecordedEvent) -> Iterator[Upsert]:
    yield _account_change(
        e.account_id,
        r,
        e.opened_at,
        account_id=e.account_id,
        owner_name=e.owner_name,
        currency=e.currency,
        balance_minor=0,
        status=AccountStatus.OPEN.value,
        opened_at=timestamp(e.opened_at),
    )


@projection.on(FundsDeposited)
def on_funds_deposited(e: FundsDeposited, r: RecordedEvent) -> Iterator[Upsert]:
    yield _account_change(e.account_id, r, e.occurred_at, balance_minor=e.balance_after_minor)
    yield _transaction(e, r, "DEPOSIT")


@projection.on(FundsWithdrawn)
def on_funds_withdrawn(e: FundsWithdrawn, r: RecordedEvent) -> Iterator[Upsert]:
    yield _account_change(e.account_id, r, e.occurred_at, balance_minor=e.balance_after_minor)
    yield _transaction(e, r, "WITHDRAWAL")


@projection.on(AccountClosed)
def on_account_closed(e: AccountClosed, r: RecordedEvent) -> Iterator[Upsert]:
    yield _account_change(e.account_id, r, e.closed_at, status=AccountStatus.CLOSED.value)
