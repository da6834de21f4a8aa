"""Snapshots and the verified cache in the command handler, on the real SQLite store.

Given a history written through one handler, when a new handler (a restarted server)
or another process's handler runs a command, then it answers as a full replay would.
Whether a snapshot was used is shown without timing: a forged snapshot's state shows
through, and an unusable one is ignored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.application.command_handler import REQUEST_ID_REUSED, CommandHandler, Outcome
from ledger.domain import accounts
from ledger.domain.accounts import (
    Account,
    AccountStatus,
    FundsWithdrawn,
    OpenAccount,
    Reason,
)
from ledger.errors import InvalidArgument, RuleViolated
from ledger.eventstore.port import Snapshot
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.eventstore.state_codec import JsonStateCodec
from tests.application import AT, ID, STREAM, Handler, codec, deposit, withdraw

EVERY = 4
LONG = 2 * EVERY + 1
"""Deposits after which a cold handler reads a snapshot, then the one event after it."""
states = JsonStateCodec(Account)


def new_handler(store: SqliteEventStore) -> Handler:
    return CommandHandler(store, accounts.accounts, codec, snapshots=states, snapshot_every=EVERY)


async def given_history(handler: Handler, deposits: int) -> list[Outcome[accounts.Event]]:
    """An opened account, then `deposits` deposits of 10 with request ids d-0, d-1, ..."""
    await handler.handle(ID, OpenAccount(ID, "Ada", "EUR", AT), request_id="open", fingerprint="o")
    return [
        await handler.handle(ID, deposit(10), request_id=f"d-{i}", fingerprint=f"fp-{i}")
        for i in range(deposits)
    ]


async def replayed_state(store: SqliteEventStore) -> tuple[accounts.State, int]:
    recorded = await store.read_stream(STREAM)
    events = [codec.decode_recorded(r) for r in recorded]
    return accounts.accounts.fold(None, events), recorded[-1].version  # type: ignore[arg-type]


async def test_a_snapshot_is_written_as_the_stream_passes_each_multiple(
    store: SqliteEventStore,
) -> None:
    await given_history(new_handler(store), 2 * EVERY)  # versions 0..8
    snapshot = await store.read_snapshot(STREAM)
    assert snapshot is not None
    assert snapshot.version == 2 * EVERY - 1
    recorded = await store.read_stream(STREAM, 0, snapshot.version + 1)
    assert snapshot.position == recorded[-1].position
    events = [codec.decode_recorded(r) for r in recorded]
    assert states.decode(snapshot.data) == accounts.accounts.fold(None, events)  # type: ignore[arg-type]


async def test_a_cold_handler_starts_from_the_snapshot_and_reads_only_what_follows(
    store: SqliteEventStore,
) -> None:
    await given_history(new_handler(store), LONG)
    snapshot = await store.read_snapshot(STREAM)
    assert snapshot is not None
    forged = Account(ID, "Forged", "EUR", 7, AccountStatus.OPEN)
    await store.write_snapshot(
        STREAM, Snapshot(snapshot.version + 1, snapshot.position, states.encode(forged))
    )

    state, version = await new_handler(store).state_of(ID)

    _, head = await replayed_state(store)
    assert version == head == snapshot.version + 2  # the forged one, and one event after
    assert state == Account(ID, "Forged", "EUR", 10 * LONG, AccountStatus.OPEN)


@pytest.mark.parametrize(
    "data",
    [b"not json", b'{"schema":"another","state":null}', b'{"schema":"%s","state":{"x":1}}'],
    ids=["corrupt", "other-schema", "wrong-shape"],
)
async def test_an_unusable_snapshot_means_a_replay(store: SqliteEventStore, data: bytes) -> None:
    await given_history(new_handler(store), LONG)
    data = data.replace(b"%s", states.schema.encode())
    await store.write_snapshot(STREAM, Snapshot(10**6, 10**6, data))

    outcome = await new_handler(store).handle(ID, deposit(1), request_id="new", fingerprint="n")

    assert outcome.version == LONG + 1
    assert await new_handler(store).state_of(ID) == await replayed_state(store)


async def test_a_retry_of_a_request_older_than_the_snapshot_survives_a_restart(
    path: Path,
) -> None:
    store = SqliteEventStore(path)
    await store.open()
    try:
        handler = new_handler(store)
        first = await given_history(handler, 1)
        spent = await handler.handle(ID, withdraw(10), request_id="w", fingerprint="fp-w")
        await given_history_more(handler, LONG)
    finally:
        await store.close()

    restarted = SqliteEventStore(path)
    await restarted.open()
    try:
        await then_old_requests_replay(new_handler(restarted), restarted, first[0], spent)
    finally:
        await restarted.close()


async def test_a_stream_that_stays_cached_forgets_the_requests_its_snapshots_cover(
    store: SqliteEventStore,
) -> None:
    handler = new_handler(store)
    first = await given_history(handler, 1)
    spent = await handler.handle(ID, withdraw(10), request_id="w", fingerprint="fp-w")

    await given_history_more(handler, 10 * EVERY)

    # The cache holds the requests since the last snapshot, not the stream's history...
    assert len(handler._cache[STREAM].requests) < EVERY
    # ...and every older request still replays, found in the store
    await then_old_requests_replay(handler, store, first[0], spent)


async def then_old_requests_replay(
    handler: Handler,
    store: SqliteEventStore,
    first: Outcome[accounts.Event],
    spent: Outcome[accounts.Event],
) -> None:
    """Retries of requests from before the snapshot (`first`, the deposit d-0; `spent`,
    the withdrawal w; the opening) return their originals and append nothing; d-0 reused
    for another command is refused; a new request appends."""
    assert (await store.read_snapshot(STREAM)) is not None
    head = await store.head_position()
    retry = await handler.handle(ID, deposit(10), request_id="d-0", fingerprint="fp-0")
    assert retry.replayed
    assert (retry.events, retry.version, retry.position) == (
        first.events,
        first.version,
        first.position,
    )
    # the balance is now far above 10, yet the withdrawal's retry is the original
    again = await handler.handle(ID, withdraw(10), request_id="w", fingerprint="fp-w")
    assert again.replayed
    assert again.events == spent.events == (FundsWithdrawn(ID, 10, "EUR", "rent", 0, AT),)
    # a retry the domain would now refuse (the account exists) is the original too
    reopened = await handler.handle(
        ID, OpenAccount(ID, "Ada", "EUR", AT), request_id="open", fingerprint="o"
    )
    assert (reopened.replayed, reopened.version) == (True, 0)
    with pytest.raises(InvalidArgument) as info:
        await handler.handle(ID, deposit(99), request_id="d-0", fingerprint="other")
    assert info.value.reason == REQUEST_ID_REUSED
    assert await store.head_position() == head
    fresh = await handler.handle(ID, deposit(1), request_id="brand-new", fingerprint="b")
    assert not fresh.replayed
    assert await handler.state_of(ID) == await replayed_state(store)


async def given_history_more(handler: Handler, deposits: int) -> None:
    for i in range(deposits):
        await handler.handle(ID, deposit(10), request_id=f"more-{i}", fingerprint=f"m-{i}")


async def test_a_refusal_on_a_stale_cache_is_checked_against_the_log(
    store: SqliteEventStore, second_store: SqliteEventStore
) -> None:
    mine, theirs = new_handler(store), new_handler(second_store)
    await given_history(mine, 0)  # mine caches a balance of 0
    await theirs.handle(ID, deposit(10), request_id="theirs", fingerprint="t")

    outcome = await mine.handle(ID, withdraw(10), request_id="mine", fingerprint="m")

    assert outcome.events == (FundsWithdrawn(ID, 10, "EUR", "rent", 0, AT),)
    with pytest.raises(RuleViolated) as info:  # and a real refusal is still refused
        await mine.handle(ID, withdraw(1), request_id="mine-2", fingerprint="m2")
    assert info.value.reason == Reason.INSUFFICIENT_FUNDS


async def test_a_clients_expected_version_is_checked_against_the_log_not_the_cache(
    store: SqliteEventStore, second_store: SqliteEventStore
) -> None:
    mine, theirs = new_handler(store), new_handler(second_store)
    await given_history(mine, 1)  # mine caches version 1
    await theirs.handle(ID, deposit(5), request_id="theirs", fingerprint="t")

    outcome = await mine.handle(
        ID, deposit(1), request_id="mine", fingerprint="m", expected_version=2
    )

    assert outcome.version == 3
    assert await mine.state_of(ID) == await replayed_state(store)


class UnindexedStore(SqliteEventStore):
    """A store whose find_event would scan (as KurrentDB's does)."""

    @property
    def unique_event_ids(self) -> bool:
        return False


async def test_no_snapshots_on_a_store_without_an_index_by_event_id(path: Path) -> None:
    store = UnindexedStore(path)
    await store.open()
    try:
        await given_history(new_handler(store), LONG)
        assert await store.read_snapshot(STREAM) is None
        retry = await new_handler(store).handle(
            ID, deposit(10), request_id="d-0", fingerprint="fp-0"
        )
        assert retry.replayed
    finally:
        await store.close()
