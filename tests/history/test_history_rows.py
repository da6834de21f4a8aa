"""The history rows the banking projection writes for as-of queries, without stores."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

from ledger.banking.views import (
    ACCOUNT_HISTORY,
    AT_KEY,
    STATUS_HISTORY,
    TRANSACTION,
    codec,
    projection,
    timestamp,
)
from ledger.domain.accounts import (
    AccountClosed,
    AccountFrozen,
    AccountOpened,
    AccountUnfrozen,
    Event,
    FundsDeposited,
    FundsWithdrawn,
    TransferCredited,
    TransferCreditRejected,
    TransferDebited,
    TransferRefunded,
    TransferSettled,
)
from ledger.eventstore.port import RecordedEvent
from ledger.views.port import Upsert

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ID = "acc-1"


def test_timestamps_are_fixed_width_utc_and_sort_as_text_like_time() -> None:
    rng = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    instants = [AT + timedelta(microseconds=rng.randint(0, 10**9)) for _ in range(300)]
    instants += [AT, AT + timedelta(seconds=1), AT + timedelta(microseconds=1)]
    texts = [timestamp(i.astimezone(rng.choice(zones))) for i in instants]
    assert {len(t) for t in texts} == {len("2026-01-02T03:04:05.000000+00:00")}
    assert all(t.endswith("+00:00") for t in texts)
    assert timestamp(AT) == "2026-01-02T03:04:05.000000+00:00"
    assert sorted(texts) == [timestamp(i) for i in sorted(instants)]
    assert all(datetime.fromisoformat(t) == i for t, i in zip(texts, instants, strict=True))


def recorded(event: Event, version: int) -> RecordedEvent:
    type_name, data = codec.encode(event)
    return RecordedEvent(
        event_id=uuid.uuid4(),
        stream=f"account-{ID}",
        version=version,
        position=100 + version,
        type=type_name,
        data=data,
        metadata=b"{}",
        recorded_at=AT,
    )


def every_account_event(at: datetime) -> list[Event]:
    t = "t-1"
    return [
        AccountOpened(ID, "Ada", "EUR", at),
        FundsDeposited(ID, 500, "EUR", "", 500, at),
        FundsWithdrawn(ID, 100, "EUR", "", 400, at),
        AccountFrozen(ID, "checks", at),
        AccountUnfrozen(ID, at),
        TransferDebited(ID, t, "acc-2", 50, "EUR", "", 350, at),
        TransferSettled(ID, t, at),
        TransferCredited(ID, "t-2", "acc-2", 10, "EUR", "", 360, at),
        TransferCreditRejected(ID, "t-3", "acc-2", 10, "EUR", "closed", at),
        TransferDebited(ID, "t-4", "acc-2", 60, "EUR", "", 300, at),
        TransferRefunded(ID, "t-4", "acc-2", 60, "EUR", "no", 360, at),
        AccountClosed(ID, at),
    ]


def rows(upserts: list[Upsert], collection: str) -> list[Upsert]:
    return [u for u in upserts if u.collection == collection]


def test_every_account_event_writes_a_history_row_with_what_it_determines() -> None:
    events = every_account_event(AT)
    for version, event in enumerate(events):
        r = recorded(event, version)
        upserts = projection.upserts_for(r)
        key = f"{ID}/{version:020d}"
        (row,) = rows(upserts, ACCOUNT_HISTORY)
        assert (row.key, row.position) == (key, 100 + version)
        assert row.fields["version"] == version
        assert row.fields["position"] == 100 + version
        assert row.fields["updated_at"] == timestamp(AT)
        status = rows(upserts, STATUS_HISTORY)
        moves_money = hasattr(event, "balance_after_minor")
        if moves_money or isinstance(event, AccountOpened):
            expected = event.balance_after_minor if moves_money else 0  # type: ignore[union-attr]
            assert row.fields["balance_minor"] == expected
        else:
            assert "balance_minor" not in row.fields
        assert row.fields[TRANSACTION] is moves_money
        if moves_money:  # the transaction itself, on the same row
            assert row.fields["transaction_id"] == str(r.event_id)
            assert row.fields["amount_minor"] == event.amount_minor  # type: ignore[union-attr]
            assert row.fields["balance_after_minor"] == row.fields["balance_minor"]
            assert row.fields["occurred_at"] == timestamp(AT)
        assert {u.collection for u in upserts} & {"transactions", "balance_history"} == set()
        sets_status = isinstance(
            event, AccountOpened | AccountClosed | AccountFrozen | AccountUnfrozen
        )
        assert [r.key for r in status] == ([key] if sets_status else [])


def test_equal_times_order_by_version_in_the_time_key() -> None:
    """Several events in one microsecond: the last of them is the state at that time."""
    events = every_account_event(AT)
    keys = [
        rows(projection.upserts_for(recorded(e, v)), ACCOUNT_HISTORY)[0].fields[AT_KEY]
        for v, e in enumerate(events)
    ]
    assert len(set(keys)) == len(keys)
    assert sorted(keys) == keys  # type: ignore[type-var]
    later = projection.upserts_for(recorded(FundsDeposited(ID, 1, "EUR", "", 1, AT), 10**6))
    assert rows(later, ACCOUNT_HISTORY)[0].fields[AT_KEY] > keys[-1]  # type: ignore[operator]
