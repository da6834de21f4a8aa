"""Commands queued on one stream are decided in order and appended together.

Given an account, when many commands on it arrive at once, then each gets the answer it
would have got alone, in some order, and the log holds exactly the accepted ones, with
fewer appends (commits) than commands. On the real SQLite store; appends are counted
by a subclass that only counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from ledger.application.command_handler import CommandHandler, Outcome
from ledger.domain import accounts
from ledger.domain.accounts import (
    DepositFunds,
    FundsDeposited,
    FundsWithdrawn,
    OpenAccount,
    Reason,
    WithdrawFunds,
)
from ledger.errors import RuleViolated
from ledger.eventstore.port import AppendResult, NewEvent
from ledger.eventstore.sqlite import SqliteEventStore
from tests.application import AT, ID, STREAM, Handler, codec


class CountingStore(SqliteEventStore):
    appends = 0

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> AppendResult:
        self.appends += 1
        return await super().append(stream, events, expected_version)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(tmp_path / "events.sqlite3")
    await store.open()
    yield store
    await store.close()


async def given_an_account(handler: Handler, balance: int) -> None:
    await handler.handle(ID, OpenAccount(ID, "Ada", "EUR", AT), request_id="open", fingerprint="o")
    await handler.handle(
        ID, DepositFunds(ID, balance, "EUR", "initial", AT), request_id="init", fingerprint="i"
    )


async def attempt(
    handler: Handler, command: accounts.Command, request_id: str
) -> Outcome[accounts.Event] | RuleViolated:
    try:
        return await handler.handle(ID, command, request_id=request_id, fingerprint=request_id)
    except RuleViolated as refusal:
        return refusal


async def test_concurrent_deposits_share_commits_and_each_gets_its_own_event(
    store: CountingStore,
) -> None:
    handler = CommandHandler(store, accounts.accounts, codec)
    await given_an_account(handler, 0)
    appends_before = store.appends

    outcomes = await asyncio.gather(
        *(
            handler.handle(
                ID, DepositFunds(ID, n, "EUR", "pay", AT), request_id=f"d-{n}", fingerprint="f"
            )
            for n in range(1, 51)
        )
    )

    assert store.appends - appends_before < 10
    recorded = {r.position: r for r in await store.read_stream(STREAM)}
    assert len(recorded) == 2 + 50
    for n, outcome in enumerate(outcomes, start=1):
        (event,) = outcome.events
        assert isinstance(event, FundsDeposited)
        assert event.amount_minor == n
        assert recorded[outcome.position].version == outcome.version
        assert codec.decode_recorded(recorded[outcome.position]) == event
    assert sorted(o.version for o in outcomes) == list(range(2, 52))
    balances = [
        e.balance_after_minor
        for e in (codec.decode_recorded(r) for r in recorded.values())
        if isinstance(e, FundsDeposited)
    ]
    assert balances[-1] == sum(range(1, 51))


async def test_refusals_inside_a_burst_are_decided_on_the_state_before_them(
    store: CountingStore,
) -> None:
    handler = CommandHandler(store, accounts.accounts, codec)
    await given_an_account(handler, 25)

    results = await asyncio.gather(
        *(attempt(handler, WithdrawFunds(ID, 10, "EUR", "rent", AT), f"w-{n}") for n in range(5))
    )

    won = [r for r in results if isinstance(r, Outcome)]
    refused = [r for r in results if isinstance(r, RuleViolated)]
    assert len(won) == 2
    assert [r.reason for r in refused] == [Reason.INSUFFICIENT_FUNDS] * 3
    assert sorted(e.balance_after_minor for o in won for e in o.events) == [5, 15]  # type: ignore[union-attr]
    withdrawn = [
        e
        for e in (codec.decode_recorded(r) for r in await store.read_stream(STREAM))
        if isinstance(e, FundsWithdrawn)
    ]
    assert [e.balance_after_minor for e in withdrawn] == [15, 5]


async def test_the_same_request_twice_in_a_burst_appends_once(store: CountingStore) -> None:
    handler = CommandHandler(store, accounts.accounts, codec)
    await given_an_account(handler, 0)

    def same() -> DepositFunds:
        return DepositFunds(ID, 7, "EUR", "once", AT)

    first, other, again = await asyncio.gather(
        handler.handle(ID, same(), request_id="dup", fingerprint="f"),
        handler.handle(ID, DepositFunds(ID, 1, "EUR", "x", AT), request_id="x", fingerprint="x"),
        handler.handle(ID, same(), request_id="dup", fingerprint="f"),
    )

    assert (again.version, again.position, again.events) == (
        first.version,
        first.position,
        first.events,
    )
    assert first.replayed != again.replayed
    assert not other.replayed
    assert len(await store.read_stream(STREAM)) == 2 + 2
