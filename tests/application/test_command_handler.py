"""The command handler against the real SQLite event store on a temporary file (no mocks)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest

from ledger.application.command_handler import (
    REQUEST_ID_REUSED,
    WRONG_EXPECTED_VERSION,
    CommandHandler,
    Outcome,
)
from ledger.domain import accounts
from ledger.domain.accounts import (
    AccountOpened,
    DepositFunds,
    FundsDeposited,
    FundsWithdrawn,
    OpenAccount,
    Reason,
)
from ledger.errors import ConcurrencyConflict, InvalidArgument, RuleViolated
from ledger.eventstore.codec import EventMetadata
from ledger.eventstore.port import RecordedEvent
from ledger.eventstore.sqlite import SqliteEventStore
from tests.application import AT, ID, STREAM, Handler, codec, deposit, withdraw


def decode(recorded: RecordedEvent) -> accounts.Event:
    return cast(accounts.Event, codec.decode_recorded(recorded))


def new_handler(store: SqliteEventStore) -> Handler:
    return CommandHandler(store, accounts.accounts, codec)


@pytest.fixture
def handler(store: SqliteEventStore) -> Handler:
    return new_handler(store)


async def open_account(handler: Handler, balance: int = 0) -> None:
    await handler.handle(
        ID, OpenAccount(ID, "Ada", "EUR", AT), request_id="open", fingerprint="f-open"
    )
    if balance:
        await handler.handle(
            ID,
            DepositFunds(ID, balance, "EUR", "initial", AT),
            request_id="initial",
            fingerprint="f-initial",
        )


async def balance_in_log(store: SqliteEventStore) -> int:
    state = accounts.accounts.fold(None, [decode(r) for r in await store.read_stream(STREAM)])
    assert state is not None
    return state.balance_minor


async def test_a_command_appends_its_events_with_request_metadata(
    handler: Handler, store: SqliteEventStore
) -> None:
    outcome = await handler.handle(
        ID,
        OpenAccount(ID, "Ada", "EUR", AT),
        request_id="r-1",
        fingerprint="fp-1",
        correlation_id="corr",
    )
    assert outcome.events == (AccountOpened(ID, "Ada", "EUR", AT),)
    assert outcome.version == 0
    assert not outcome.replayed
    (recorded,) = await store.read_stream(STREAM)
    assert recorded.position == outcome.position
    assert recorded.type == "V1.AccountOpened"
    meta = EventMetadata.from_bytes(recorded.metadata)
    assert meta == EventMetadata("r-1", "fp-1", "corr", "r-1")


async def test_a_retry_returns_the_original_result_and_appends_nothing(
    handler: Handler, store: SqliteEventStore
) -> None:
    await open_account(handler)
    first = await handler.handle(ID, deposit(100), request_id="dep", fingerprint="fp-dep")
    head = await store.head_position()
    retry = await handler.handle(ID, deposit(100), request_id="dep", fingerprint="fp-dep")
    assert (retry.version, retry.position) == (first.version, first.position)
    assert retry.events == first.events
    assert retry.replayed
    assert await store.head_position() == head
    assert len(await store.read_stream(STREAM)) == 2


async def test_a_retry_after_later_commands_still_returns_its_own_result(
    handler: Handler, store: SqliteEventStore
) -> None:
    await open_account(handler)
    first = await handler.handle(ID, deposit(100), request_id="dep-1", fingerprint="fp-1")
    later = await handler.handle(ID, deposit(5), request_id="dep-2", fingerprint="fp-2")
    retry = await handler.handle(ID, deposit(100), request_id="dep-1", fingerprint="fp-1")
    assert (retry.version, retry.position) == (first.version, first.position)
    assert retry.events == (FundsDeposited(ID, 100, "EUR", "salary", 100, AT),)
    assert later.version == first.version + 1
    assert await balance_in_log(store) == 105


async def test_a_retry_wins_over_a_now_stale_expected_version(
    handler: Handler, store: SqliteEventStore
) -> None:
    await open_account(handler)
    first = await handler.handle(
        ID, deposit(1), request_id="dep", fingerprint="fp", expected_version=0
    )
    retry = await handler.handle(
        ID, deposit(1), request_id="dep", fingerprint="fp", expected_version=0
    )
    assert retry.replayed
    assert (retry.version, retry.position) == (first.version, first.position)
    assert len(await store.read_stream(STREAM)) == 2


async def test_a_refused_command_can_be_retried_once_it_is_allowed(handler: Handler) -> None:
    await open_account(handler)
    with pytest.raises(RuleViolated) as info:
        await handler.handle(ID, withdraw(10), request_id="w", fingerprint="fp-w")
    assert info.value.reason == Reason.INSUFFICIENT_FUNDS
    await handler.handle(ID, deposit(10), request_id="d", fingerprint="fp-d")
    outcome = await handler.handle(ID, withdraw(10), request_id="w", fingerprint="fp-w")
    assert not outcome.replayed
    assert outcome.events == (FundsWithdrawn(ID, 10, "EUR", "rent", 0, AT),)


async def test_a_request_id_reused_for_another_command_is_invalid(
    handler: Handler, store: SqliteEventStore
) -> None:
    await open_account(handler)
    await handler.handle(ID, deposit(100), request_id="dep", fingerprint="fp-100")
    head = await store.head_position()
    with pytest.raises(InvalidArgument) as info:
        await handler.handle(ID, deposit(999), request_id="dep", fingerprint="fp-999")
    assert info.value.reason == REQUEST_ID_REUSED
    assert [v.field for v in info.value.violations] == ["request_id"]
    assert await store.head_position() == head
    assert await balance_in_log(store) == 100


async def test_idempotency_survives_a_restart(path: Path) -> None:
    store = SqliteEventStore(path)
    await store.open()
    try:
        await open_account(new_handler(store))
        first = await new_handler(store).handle(
            ID, deposit(100), request_id="dep", fingerprint="fp"
        )
    finally:
        await store.close()

    restarted = SqliteEventStore(path)
    await restarted.open()
    try:
        head = await restarted.head_position()
        handler = new_handler(restarted)
        retry = await handler.handle(ID, deposit(100), request_id="dep", fingerprint="fp")
        assert retry.replayed
        assert (retry.version, retry.position) == (first.version, first.position)
        assert retry.events == first.events
        with pytest.raises(InvalidArgument) as info:
            await handler.handle(ID, deposit(1), request_id="dep", fingerprint="other")
        assert info.value.reason == REQUEST_ID_REUSED
        assert await restarted.head_position() == head
    finally:
        await restarted.close()


async def test_a_wrong_expected_version_is_a_conflict(
    handler: Handler, store: SqliteEventStore
) -> None:
    await open_account(handler, balance=50)  # versions 0 and 1
    head = await store.head_position()
    for stale in (0, 2, 7):
        with pytest.raises(ConcurrencyConflict) as info:
            await handler.handle(
                ID, deposit(1), request_id=f"d-{stale}", fingerprint="fp", expected_version=stale
            )
        assert info.value.reason == WRONG_EXPECTED_VERSION
    assert await store.head_position() == head
    outcome = await handler.handle(
        ID, deposit(1), request_id="d-ok", fingerprint="fp", expected_version=1
    )
    assert outcome.version == 2


async def test_the_cache_catches_up_with_another_handlers_appends(
    store: SqliteEventStore, second_store: SqliteEventStore
) -> None:
    mine, theirs = new_handler(store), new_handler(second_store)
    await open_account(mine, balance=10)
    assert await mine.state_of(ID) == (
        accounts.Account(ID, "Ada", "EUR", 10, accounts.AccountStatus.OPEN),
        1,
    )
    await theirs.handle(ID, deposit(5), request_id="theirs", fingerprint="fp")

    state, version = await mine.state_of(ID)
    assert state is not None
    assert (state.balance_minor, version) == (15, 2)
    outcome = await mine.handle(
        ID, withdraw(15), request_id="mine", fingerprint="fp", expected_version=2
    )
    assert outcome.events == (FundsWithdrawn(ID, 15, "EUR", "rent", 0, AT),)
    assert outcome.version == 3
    # and the other handler sees that request as done: a retry there is a replay
    retry = await theirs.handle(ID, withdraw(15), request_id="mine", fingerprint="fp")
    assert retry.replayed
    assert retry.position == outcome.position


@pytest.mark.parametrize("separate_stores", [True, False], ids=["two-stores", "one-store"])
async def test_racing_withdrawals_from_two_handlers_never_overdraw(
    store: SqliteEventStore, second_store: SqliteEventStore, separate_stores: bool
) -> None:
    first = new_handler(store)
    second = new_handler(second_store if separate_stores else store)
    await open_account(first, balance=30)

    async def attempt(handler: Handler, n: int) -> Outcome[accounts.Event] | Exception:
        try:
            return await handler.handle(ID, withdraw(1), request_id=f"w-{n}", fingerprint="fp")
        except (RuleViolated, ConcurrencyConflict) as exc:
            return exc

    results = await asyncio.gather(*(attempt(first if n % 2 else second, n) for n in range(50)))
    won = [r for r in results if isinstance(r, Outcome)]
    lost = [r for r in results if not isinstance(r, Outcome)]
    assert len(won) == 30
    for exc in lost:
        assert isinstance(exc, ConcurrencyConflict) or (
            isinstance(exc, RuleViolated) and exc.reason == Reason.INSUFFICIENT_FUNDS
        ), exc

    recorded = await store.read_stream(STREAM)
    assert len(recorded) == 2 + 30
    by_position = {r.position: r for r in recorded}
    balances = []
    for outcome in won:
        (event,) = outcome.events
        assert isinstance(event, FundsWithdrawn)
        assert outcome.position in by_position
        assert codec.decode_recorded(by_position[outcome.position]) == event
        assert by_position[outcome.position].version == outcome.version
        balances.append(event.balance_after_minor)
    assert sorted(balances) == list(range(30))
    assert await balance_in_log(store) == 0
    folded = [
        e.balance_after_minor
        for e in map(decode, recorded)
        if isinstance(e, FundsDeposited | FundsWithdrawn)
    ]
    assert min(folded) == 0
    assert folded == [30, *range(29, -1, -1)]
