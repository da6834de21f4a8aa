"""The transfer process manager on the real SQLite event store and CommandHandler:
credit then settle, refusal then refund, exactly once across replays, crashes and
several process managers at once."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from ledger.banking.transfer_saga import TransferSaga
from ledger.banking.views import ACCOUNT_HISTORY, TRANSFERS, projection
from ledger.domain.accounts import (
    DebitTransfer,
    Reason,
    TransferCreditRejected,
)
from ledger.errors import Unavailable
from ledger.eventstore.port import NO_STREAM, AppendResult, NewEvent, RecordedEvent
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.process_manager import ProcessManager
from ledger.views.port import Checkpoint
from ledger.views.sqlite import SqliteViewStore
from tests.contract.event_store_contract import events as new_events
from tests.transfers.bank import AT, Bank, clock, running, sqlite_bank, wait_until


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite3"


@pytest.fixture
async def bank(path: Path) -> AsyncIterator[Bank]:
    async with sqlite_bank(path) as opened:
        await opened.open("alice", 1000)
        await opened.open("bob")
        await opened.open("carol")
        yield opened


async def run_to_completion(bank: Bank, *managers: ProcessManager) -> None:
    """Run process managers until every transfer is finished and they have seen it all."""
    managers = managers or (bank.process_manager(),)

    async def finished() -> bool:
        head = (await bank.log())[-1].position
        return all(m.position >= head for m in managers) and await bank.all_finished()

    async with running(*managers):
        await wait_until(finished, "every transfer settled or refunded")


def kinds(events: Sequence[object]) -> list[str]:
    return [type(e).__name__ for e in events]


COMPLETED = ["TransferDebited", "TransferCredited", "TransferSettled"]
FAILED = ["TransferDebited", "TransferCreditRejected", "TransferRefunded"]


async def test_a_transfer_is_credited_then_settled(bank: Bank) -> None:
    await bank.transfer("alice", "bob", 300, transfer_id="t-1")

    await run_to_completion(bank)

    assert kinds((await bank.transfer_events())["t-1"]) == COMPLETED
    alice, bob = await bank.account("alice"), await bank.account("bob")
    assert (alice.balance_minor, alice.pending_transfers) == (700, frozenset())
    assert bob.balance_minor == 300


async def test_a_credit_the_destination_refuses_is_refunded(bank: Bank, tmp_path: Path) -> None:
    await bank.transfer("alice", "bob", 300, transfer_id="t-1")
    await bank.close("bob")  # after the debit, before the process manager credits

    await run_to_completion(bank)

    events = (await bank.transfer_events())["t-1"]
    assert kinds(events) == FAILED
    rejected = events[1]
    assert isinstance(rejected, TransferCreditRejected)
    assert rejected.reason == Reason.ACCOUNT_CLOSED
    assert (await bank.account("alice")).balance_minor == 1000
    assert (await bank.account("bob")).balance_minor == 0

    # ... and the views say FAILED, with the reason and a refund transaction.
    views = SqliteViewStore(tmp_path / "views.sqlite3")
    await views.open(projection.collections)
    try:
        log = await bank.log()
        upserts = [u for r in log for u in projection.upserts_for(r)]
        await views.apply(upserts, Checkpoint(projection.checkpoint_name, log[-1].position))
        transfer = await views.get(TRANSFERS, "t-1")
        assert transfer is not None
        assert (transfer["status"], transfer["failure_reason"]) == ("FAILED", "ACCOUNT_CLOSED")
        refunds = await views.find(
            ACCOUNT_HISTORY, where={"kind": "TRANSFER_REFUND"}, order_by="position", limit=10
        )
        assert [
            (d["account_id"], d["amount_minor"], d["balance_after_minor"]) for d in refunds
        ] == [("alice", 300, 1000)]
    finally:
        await views.close()


async def test_replaying_the_whole_saga_from_the_start_pays_once(bank: Bank) -> None:
    for n in range(3):
        await bank.transfer("alice", "bob", 100, transfer_id=f"t-ok-{n}")
    await bank.transfer("alice", "carol", 50, transfer_id="t-refused")
    await bank.close("carol")
    await run_to_completion(bank)
    settled = await bank.log()

    # A process manager with no checkpoint replays every step of every transfer.
    replay = bank.process_manager("replay")
    await run_to_completion(bank, replay)
    assert replay.steps == 3 * 2 + 2  # credit and settle each, credit and refund

    after = await bank.log()
    assert [r for r in after if r.stream.startswith("account-")] == [
        r for r in settled if r.stream.startswith("account-")
    ]
    assert (await bank.account("alice")).balance_minor == 700
    assert (await bank.account("bob")).balance_minor == 300


@pytest.mark.parametrize("done", [["credit"], ["credit", "settle"]])
async def test_a_saga_interrupted_after_any_step_resumes_without_repeating_it(
    bank: Bank, done: list[str]
) -> None:
    """As after a crash between a step and the checkpoint: the steps taken are replayed."""
    await bank.transfer("alice", "bob", 300, transfer_id="t-1")
    saga = TransferSaga(bank.accounts, clock)
    for _step in done:
        last = (await bank.log())[-1]
        step = saga.react(last)
        assert step is not None
        await step.run()

    await run_to_completion(bank)

    assert kinds((await bank.transfer_events())["t-1"]) == COMPLETED
    assert (await bank.account("bob")).balance_minor == 300


async def test_two_process_managers_complete_each_transfer_exactly_once(
    bank: Bank, path: Path
) -> None:
    """Two command servers' process managers on one log, racing over the same backlog."""
    rng = random.Random(7)
    await bank.open("dave", 1000)
    await bank.open("erin")
    expected_failures = set()
    for n in range(40):
        source = rng.choice(["alice", "dave"])
        destination = rng.choice(["bob", "carol", "erin"])
        await bank.transfer(source, destination, rng.randint(1, 40), transfer_id=f"t-{n}")
        if destination == "erin":
            expected_failures.add(f"t-{n}")
    await bank.close("erin")

    async with sqlite_bank(path) as other:
        first, second = bank.process_manager(), other.process_manager()
        await run_to_completion(bank, first, second)
        assert first.steps > 0
        assert second.steps > 0

    outcomes = await bank.transfer_events()
    assert len(outcomes) == 40
    for transfer_id, events in outcomes.items():
        assert kinds(events) == (FAILED if transfer_id in expected_failures else COMPLETED)
    balances = [(await bank.account(a)).balance_minor for a in ("alice", "bob", "carol", "dave")]
    assert sum(balances) == 2000
    assert (await bank.account("erin")).balance_minor == 0


async def test_a_step_that_cannot_succeed_is_logged_and_skipped(
    bank: Bank, caplog: pytest.LogCaptureFixture
) -> None:
    # A debit towards an account that does not exist (TransferFunds never does that).
    await bank.run("alice", DebitTransfer("alice", "t-lost", "nobody", 5, "EUR", "", AT))
    await bank.transfer("alice", "bob", 300, transfer_id="t-1")

    with caplog.at_level(logging.ERROR, logger="ledger.processmanager"):
        async with running(bank.process_manager()):

            async def t1_done() -> bool:
                return len((await bank.transfer_events())["t-1"]) == 3

            await wait_until(t1_done, "t-1 to complete")

    failures = [r for r in caplog.records if r.getMessage() == "step failed, skipped"]
    assert [getattr(r, "step", "") for r in failures] == [
        "credit transfer t-lost on account nobody"
    ]
    assert kinds((await bank.transfer_events())["t-lost"]) == ["TransferDebited"]


class FlakyStore(SqliteEventStore):
    """Refuses the first `failures` appends to account streams, as a store that is down."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path, poll_interval=0.001)
        self.failures = failures

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> AppendResult:
        if stream.startswith("account-") and self.failures:
            self.failures -= 1
            raise Unavailable("the store is down")
        return await super().append(stream, events, expected_version)


async def test_an_unavailable_store_is_retried(bank: Bank, path: Path) -> None:
    await bank.transfer("alice", "bob", 300, transfer_id="t-1")
    flaky = FlakyStore(path, failures=3)
    await flaky.open()
    try:
        await run_to_completion(Bank(flaky))
    finally:
        await flaky.close()
    assert flaky.failures == 0
    assert kinds((await bank.transfer_events())["t-1"]) == COMPLETED


async def test_the_checkpoint_is_saved_on_stop_and_resumed(bank: Bank) -> None:
    await bank.transfer("alice", "bob", 300, transfer_id="t-1")
    manager = bank.process_manager()
    await run_to_completion(bank, manager)
    stopped_at = manager.position

    restarted = bank.process_manager()
    assert await restarted.load_checkpoint() == stopped_at
    await bank.transfer("alice", "carol", 1, transfer_id="t-2")
    await run_to_completion(bank, restarted)
    assert restarted.steps == 2  # t-2's credit and settle: nothing of t-1 again
    assert kinds((await bank.transfer_events())["t-1"]) == COMPLETED


def test_no_client_can_send_a_step_request_id() -> None:
    """A client that could send the credit's request id could pre-empt its outcome."""
    from ledger.banking.transfer_saga import step_request_id
    from ledger.grpc.requests import check_request_id

    for step in ("credit", "settle", "refund"):
        assert check_request_id(step_request_id("t-1", step)) != []


async def test_after_a_caught_up_batch_the_process_manager_waits_its_pace(path: Path) -> None:
    """Most commits hold nothing a process manager acts on: at the head it reads what
    came in the last `live_pace` seconds together, not each commit as it lands."""
    seen: list[str] = []

    def react(recorded: RecordedEvent) -> None:
        seen.append(recorded.stream)

    async with sqlite_bank(path) as bank:
        for n in range(3):
            await bank.store.append(f"thing-{n}", new_events(1), NO_STREAM)
        manager = ProcessManager(
            bank.store, name="paced", stream_prefixes=("thing-",), react=react, live_pace=60
        )
        async with running(manager):

            async def all_three() -> bool:
                return len(seen) == 3

            await wait_until(all_three, "the events already in the log")
            await bank.store.append("thing-3", new_events(1), NO_STREAM)
            await asyncio.sleep(0.3)
            assert seen == ["thing-0", "thing-1", "thing-2"]  # thing-3 waits for the pace
