"""The runner's pipeline: batches read ahead are joined into one write, a write in flight
always lands with its checkpoint, and a read error resumes from the checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from ledger.banking.views import ACCOUNT_HISTORY, ACCOUNTS, TRANSACTION, projection
from ledger.errors import Unavailable
from ledger.eventstore.port import SubscriptionBatch
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.projection_runner import READ_AHEAD, ProjectionRunner
from ledger.views.port import Checkpoint, Upsert
from tests.projector import GatedViews, Stores, append_account_events, eventually
from tests.support import new_id

NAME = projection.checkpoint_name
DEPOSITS = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # with the opening: events at positions 1 to 10


class OneEventBatches(SqliteEventStore):
    """Delivers one event per batch, counts the batches handed out, and can fail once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.delivered = 0
        self.fail_at: int | None = None

    async def subscribe(
        self,
        after_position: int,
        *,
        stream_prefixes: Sequence[str] = (),
        event_types: Sequence[str] = (),
        batch_size: int = 1,
    ) -> AsyncIterator[SubscriptionBatch]:
        batches = super().subscribe(
            after_position, stream_prefixes=stream_prefixes, event_types=event_types, batch_size=1
        )
        async for batch in batches:
            if self.delivered == self.fail_at:
                self.fail_at = None
                raise Unavailable("event store unreachable")
            self.delivered += 1
            yield batch


class RecordingViews(GatedViews):
    """Records the checkpoint of every write asked for and of every write that lands."""

    def __init__(self, stores: Stores) -> None:
        super().__init__(stores.views)
        self.asked: list[int] = []
        self.landed: list[int] = []

    async def apply(self, upserts: Sequence[Upsert], checkpoint: Checkpoint) -> None:
        self.asked.append(checkpoint.position)
        await super().apply(upserts, checkpoint)
        self.landed.append(checkpoint.position)


@contextlib.asynccontextmanager
async def one_event_batches(stores: Stores) -> AsyncIterator[OneEventBatches]:
    events = OneEventBatches(stores.data_dir / "events.sqlite3")
    await events.open()
    try:
        yield events
    finally:
        await events.close()


async def assert_views_complete(stores: Stores, account_id: str) -> None:
    account = await stores.views.get(ACCOUNTS, account_id) or {}
    assert (account["balance_minor"], account["version"]) == (sum(DEPOSITS), len(DEPOSITS))
    history = await stores.views.find(
        ACCOUNT_HISTORY, where={"account_id": account_id}, order_by="version", limit=100
    )
    assert [row["version"] for row in history] == list(range(len(DEPOSITS) + 1))
    assert sum(row[TRANSACTION] for row in history) == len(DEPOSITS)


async def test_batches_read_ahead_while_a_write_is_in_flight_are_joined_into_one_write(
    stores: Stores,
) -> None:
    account_id = new_id()
    await append_account_events(stores.events, account_id, DEPOSITS)
    views = RecordingViews(stores)
    views.gate.clear()  # holds the first write
    async with one_event_batches(stores) as events:
        runner = ProjectionRunner(events, views, projection, status_interval=0.01)
        task = asyncio.create_task(runner.run())
        try:
            await views.waiting.wait()
            (first,) = views.asked
            # Past the first write's batches, READ_AHEAD wait and one more is read.
            await eventually(
                lambda: asyncio.sleep(0, events.delivered),
                lambda n: n >= first + READ_AHEAD + 1,
                "read ahead",
            )
            views.gate.set()
            await eventually(lambda: stores.views.checkpoint(NAME), lambda p: p == 10, "caught up")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert views.landed[:2] == [first, first + READ_AHEAD]
    assert views.landed == sorted(views.landed)
    await assert_views_complete(stores, account_id)


async def test_cancelled_with_a_write_in_flight_it_lands_with_its_checkpoint_and_no_more(
    stores: Stores,
) -> None:
    await append_account_events(stores.events, new_id(), DEPOSITS)
    views = RecordingViews(stores)
    views.gate.clear()
    async with one_event_batches(stores) as events:
        runner = ProjectionRunner(events, views, projection, status_interval=0.01)
        task = asyncio.create_task(runner.run())
        await eventually(lambda: asyncio.sleep(0, events.delivered), lambda n: n >= 3, "read ahead")
        await views.waiting.wait()
        task.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the runner while its write waits
        views.gate.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    (first,) = views.asked
    assert views.landed == [first]
    assert (runner.position, await stores.views.checkpoint(NAME)) == (first, first)


async def test_a_read_error_resumes_from_the_checkpoint_and_misses_nothing(
    stores: Stores,
) -> None:
    account_id = new_id()
    await append_account_events(stores.events, account_id, DEPOSITS)
    views = RecordingViews(stores)
    async with one_event_batches(stores) as events:
        events.fail_at = 4
        runner = ProjectionRunner(events, views, projection, status_interval=0.01)
        task = asyncio.create_task(runner.run(max_delay=0.01))
        try:
            await eventually(lambda: stores.views.checkpoint(NAME), lambda p: p == 10, "caught up")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert events.fail_at is None  # it did fail once
    assert runner.last_error == "event store unreachable"
    assert views.landed == sorted(views.landed)
    await assert_views_complete(stores, account_id)


async def test_a_backlog_is_not_paced_and_live_batches_are(stores: Stores) -> None:
    """The backlog's batches are read one after another; after the caught-up batch the
    reader waits `live_pace` before it reads on, so what comes meanwhile is written
    together."""
    account_id = new_id()
    await append_account_events(stores.events, account_id, DEPOSITS)
    async with one_event_batches(stores) as events:
        runner = ProjectionRunner(
            events, stores.views, projection, status_interval=0.01, live_pace=60
        )
        task = asyncio.create_task(runner.run())
        try:
            # Ten one-event batches, only the last of them caught up: none waited on.
            await eventually(lambda: stores.views.checkpoint(NAME), lambda p: p == 10, "all")
            await assert_views_complete(stores, account_id)
            await append_account_events(stores.events, new_id(), [])  # at position 11
            await asyncio.sleep(0.3)
            # The reader is waiting out its pace after the caught-up batch.
            assert (events.delivered, await stores.views.checkpoint(NAME)) == (10, 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
