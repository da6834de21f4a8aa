"""The banking read model: collection names, indexes, and the `On<Event>` projections.

Transfers have two views: `transfers` keyed by transfer id, and `account_transfers`
keyed `<account_id>/<transfer_id>`, one document per account a transfer touches, so
ListTransfers is one indexed query. The debit, the credit and the refund each carry
both account ids and update all three documents; the debit's position orders them. A
rejected credit leaves the transfer PENDING until its refund.

`account_history` has one row per account event, keyed `<account_id>/<version:020d>`:
its version, position and time (and `at_key`, ordering by time then version), the
balance if the event set it, and, for a transaction (a deposit, a withdrawal, a
transfer's debit, credit or refund), the transaction itself with `transaction` true:
ListTransactions serves those rows' renderings (each row's `Transaction` message,
encoded once here: only transaction rows have one), so a deposit writes two documents
(the account and its row), not one per view, and a page is served without building a
message. `status_history` holds the events that set the status.
Handlers see only their event, so each row holds what that event determines; the state
as of version v (GetAccountAsOf) is the last account_history row at or before v, its
balance from the last row at or before v that set one (the last transaction, else the
opening), its status from the last status_history row: each a descending limit-1
read of the account's key range (`history_rows`), which no index needs; only the as-of
by time uses one. Owner, currency and opening time never change and come from the
`accounts` document. WatchAccount streams the account_history rows in version order
(after the last version it sent).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from ledger.banking.messages import transaction_message
from ledger.domain import transfers
from ledger.domain.accounts import (
    EVENT_TYPES,
    AccountClosed,
    AccountFrozen,
    AccountOpened,
    AccountStatus,
    AccountUnfrozen,
    FundsDeposited,
    FundsWithdrawn,
    TransferCredited,
    TransferCreditRejected,
    TransferDebited,
    TransferRefunded,
    TransferSettled,
)
from ledger.domain.transfers import TransferStatus
from ledger.eventstore.codec import EventCodec
from ledger.eventstore.port import RecordedEvent
from ledger.projection import Projection
from ledger.views.port import KEY, Collection, Index, Scalar, Upsert

ACCOUNTS = "accounts"
TRANSFERS = "transfers"
ACCOUNT_TRANSFERS = "account_transfers"
ACCOUNT_HISTORY = "account_history"
STATUS_HISTORY = "status_history"
TRANSACTION = "transaction"
"""The account_history field that is true on a transaction's row."""
AT_KEY = "at_key"
"""The field account_history sorts on by time: `<timestamp>/<version:020d>`."""
TRANSFER_ORDER = "debit_position"
"""The field ListTransfers sorts on: the log position of the transfer's debit."""

COLLECTIONS = (
    Collection(ACCOUNTS, (Index(("owner_name", KEY)), Index(("status", KEY)))),
    Collection(TRANSFERS),
    Collection(ACCOUNT_TRANSFERS, (Index(("account_id", TRANSFER_ORDER)),)),
    # The history rows' keys order them by account, then version: read as a key range
    # (history_rows), they need no index but the one by time.
    Collection(ACCOUNT_HISTORY, (Index(("account_id", AT_KEY)),)),
    Collection(STATUS_HISTORY),
)

codec = EventCodec({**EVENT_TYPES, **transfers.EVENT_TYPES})
# Transfer streams hold only the id claim, which no view shows (a claim whose debit
# was refused is an orphan); they are subscribed to for views that may come later.
projection = Projection(
    name="banking",
    # 2: the history collections; 3: transactions and balances on the account_history
    # rows; 4: the history rows read by key range, three indexes fewer (a new version's
    # checkpoint replays the whole log); 5: transaction rows rendered (a new generation);
    # 6: the same views, but SQLite keeps the indexed fields in columns of their own,
    # which code from before would not set: a projector of 5 refuses to write them
    version=6,
    codec=codec,
    categories=("account", "transfer"),
    collections=COLLECTIONS,
)

TransferMovement = TransferDebited | TransferCredited | TransferRefunded
AnyTransferEvent = TransferMovement | TransferCreditRejected | TransferSettled


def timestamp(at: datetime) -> str:
    """ISO-8601 in UTC, always with microseconds and `+00:00`: readable in any store
    and, being fixed-width (years 1 to 9999), orderable as text."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def at_key(at: str, version: int) -> str:
    """account_history's time order: by time, then by version among equal times."""
    return f"{at}/{version:020d}"


def history_key(account_id: str, version: int) -> str:
    """The key of the account's history row for `version`: keys sort by account, then
    version, so an account's rows are the key range `history_rows(account_id)`."""
    return f"{account_id}/{version:020d}"


def history_rows(account_id: str) -> str:
    """The key prefix of an account's history rows (`ViewStore.find`'s `key_prefix`)."""
    return f"{account_id}/"


def _account_change(
    key: str,
    r: RecordedEvent,
    updated_at: str,
    *,
    balance_minor: int | None = None,
    status: str | None = None,
    transaction: dict[str, Scalar] | None = None,
    **fields: Scalar,
) -> Iterator[Upsert]:
    """The account's document, and its history rows for the as-of queries and watches.

    `updated_at` is the event's time as `timestamp` formats it: handlers format it once
    per event (a transaction shows the same time)."""
    version, position = r.version, r.position
    if balance_minor is not None:
        fields["balance_minor"] = balance_minor
    if status is not None:
        fields["status"] = status
    fields["version"] = version
    fields["position"] = position
    fields["updated_at"] = updated_at
    yield Upsert(ACCOUNTS, key, fields, position)
    row = history_key(key, version)
    base: dict[str, Scalar] = {"account_id": key, "version": version}
    history: dict[str, Scalar] = {
        **base,
        "position": position,
        "updated_at": updated_at,
        AT_KEY: at_key(updated_at, version),
        TRANSACTION: transaction is not None,
        **(transaction or {}),
    }
    if balance_minor is not None:
        history["balance_minor"] = balance_minor
    rendered = None if transaction is None else transaction_message(history).SerializeToString()
    yield Upsert(ACCOUNT_HISTORY, row, history, position, rendered)
    if status is not None:
        yield Upsert(STATUS_HISTORY, row, {**base, "status": status}, position)


def _money_moved(
    e: FundsDeposited | FundsWithdrawn | TransferMovement,
    r: RecordedEvent,
    occurred_at: str,
    kind: str,
    **fields: Scalar,
) -> Iterator[Upsert]:
    """A transaction: the account's new balance, and its account_history row holding the
    transaction itself."""
    transaction: dict[str, Scalar] = {
        "transaction_id": str(r.event_id),
        "kind": kind,
        "amount_minor": e.amount_minor,
        "balance_after_minor": e.balance_after_minor,
        "occurred_at": occurred_at,
        **fields,
    }
    yield from _account_change(
        e.account_id, r, occurred_at, balance_minor=e.balance_after_minor, transaction=transaction
    )


def _transfer_change(
    from_account_id: str,
    to_account_id: str,
    e: AnyTransferEvent,
    r: RecordedEvent,
    **fields: Scalar,
) -> Iterator[Upsert]:
    """The transfer's document and both accounts' copies of it."""
    doc = {
        "transfer_id": e.transfer_id,
        "from_account_id": from_account_id,
        "to_account_id": to_account_id,
        "position": r.position,
        **fields,
    }
    yield Upsert(TRANSFERS, e.transfer_id, doc, r.position)
    for account_id in (from_account_id, to_account_id):
        key = f"{account_id}/{e.transfer_id}"
        yield Upsert(ACCOUNT_TRANSFERS, key, {**doc, "account_id": account_id}, r.position)


@projection.on(AccountOpened)
def on_account_opened(e: AccountOpened, r: RecordedEvent) -> Iterator[Upsert]:
    at = timestamp(e.opened_at)
    yield from _account_change(
        e.account_id,
        r,
        at,
        account_id=e.account_id,
        owner_name=e.owner_name,
        currency=e.currency,
        balance_minor=0,
        status=AccountStatus.OPEN.value,
        opened_at=at,
    )


@projection.on(FundsDeposited)
def on_funds_deposited(e: FundsDeposited, r: RecordedEvent) -> Iterator[Upsert]:
    at = timestamp(e.occurred_at)
    yield from _money_moved(e, r, at, "DEPOSIT", description=e.description)


@projection.on(FundsWithdrawn)
def on_funds_withdrawn(e: FundsWithdrawn, r: RecordedEvent) -> Iterator[Upsert]:
    at = timestamp(e.occurred_at)
    yield from _money_moved(e, r, at, "WITHDRAWAL", description=e.description)


@projection.on(AccountClosed)
def on_account_closed(e: AccountClosed, r: RecordedEvent) -> Iterator[Upsert]:
    yield from _account_change(
        e.account_id, r, timestamp(e.closed_at), status=AccountStatus.CLOSED.value
    )


@projection.on(AccountFrozen)
def on_account_frozen(e: AccountFrozen, r: RecordedEvent) -> Iterator[Upsert]:
    yield from _account_change(
        e.account_id, r, timestamp(e.frozen_at), status=AccountStatus.FROZEN.value
    )


@projection.on(AccountUnfrozen)
def on_account_unfrozen(e: AccountUnfrozen, r: RecordedEvent) -> Iterator[Upsert]:
    yield from _account_change(
        e.account_id, r, timestamp(e.unfrozen_at), status=AccountStatus.OPEN.value
    )


@projection.on(TransferDebited)
def on_transfer_debited(e: TransferDebited, r: RecordedEvent) -> Iterator[Upsert]:
    at = timestamp(e.occurred_at)
    yield from _money_moved(
        e,
        r,
        at,
        "TRANSFER_OUT",
        description=e.description,
        transfer_id=e.transfer_id,
        counterparty_account_id=e.to_account_id,
    )
    yield from _transfer_change(
        e.account_id,
        e.to_account_id,
        e,
        r,
        amount_minor=e.amount_minor,
        currency=e.currency,
        description=e.description,
        status=TransferStatus.PENDING.value,
        failure_reason="",
        requested_at=at,
        **{TRANSFER_ORDER: r.position},
    )


@projection.on(TransferCredited)
def on_transfer_credited(e: TransferCredited, r: RecordedEvent) -> Iterator[Upsert]:
    at = timestamp(e.occurred_at)
    yield from _money_moved(
        e,
        r,
        at,
        "TRANSFER_IN",
        description=e.description,
        transfer_id=e.transfer_id,
        counterparty_account_id=e.from_account_id,
    )
    yield from _transfer_change(
        e.from_account_id,
        e.account_id,
        e,
        r,
        status=TransferStatus.COMPLETED.value,
        completed_at=at,
    )


@projection.on(TransferCreditRejected)
def on_transfer_credit_rejected(e: TransferCreditRejected, r: RecordedEvent) -> Iterator[Upsert]:
    # The transfer stays PENDING until the source is refunded.
    yield from _account_change(e.account_id, r, timestamp(e.occurred_at))


@projection.on(TransferSettled)
def on_transfer_settled(e: TransferSettled, r: RecordedEvent) -> Iterator[Upsert]:
    yield from _account_change(e.account_id, r, timestamp(e.occurred_at))


@projection.on(TransferRefunded)
def on_transfer_refunded(e: TransferRefunded, r: RecordedEvent) -> Iterator[Upsert]:
    at = timestamp(e.occurred_at)
    yield from _money_moved(
        e,
        r,
        at,
        "TRANSFER_REFUND",
        description=e.reason,
        transfer_id=e.transfer_id,
        counterparty_account_id=e.to_account_id,
    )
    yield from _transfer_change(
        e.account_id,
        e.to_account_id,
        e,
        r,
        status=TransferStatus.FAILED.value,
        failure_reason=e.reason,
        completed_at=at,
    )
