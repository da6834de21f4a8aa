"""The status the projector publishes: state, head, lag, rate, errors; and over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger.banking.views import ACCOUNTS, projection
from ledger.errors import Unavailable
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.projection_runner import ProjectionRunner
from ledger.v1 import account_query_service_pb2 as qry
from ledger.views.port import KEY, StatusValue
from tests.projector import (
    GatedViews,
    Stores,
    append_account_events,
    append_malformed_deposit,
    eventually,
)
from tests.support import connect, new_id
from tests.support.processes import PROJECTOR, Stack, log_records

NAME = projection.checkpoint_name
Status = dict[str, StatusValue]


async def status_of(views: GatedViews) -> Status:
    found = [s for s in await views.statuses() if s[KEY] == NAME]
    return found[0] if found else {}


@contextlib.asynccontextmanager
async def running(runner: ProjectionRunner) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            await task


async def test_catching_up_with_a_lag_then_live_then_stopped(stores: Stores) -> None:
    views = GatedViews(stores.views)
    account_id = new_id()
    appended = await append_account_events(stores.events, account_id, [100, 250])
    assert appended.position == 3
    views.gate.clear()  # the projector will hold its first batch
    runner = ProjectionRunner(stores.events, views, projection, status_interval=0.01)
    async with running(runner) as task:
        # The head may be seen a moment before the batch is in hand (and has an age).
        behind = await eventually(
            lambda: status_of(views),
            lambda s: s.get("head_position") == 3 and s.get("lag_seconds") != 0.0,
            "saw the head with the batch in hand",
        )
        assert behind["state"] == "CATCHING_UP"
        assert behind["checkpoint_position"] == 0
        assert behind["lag_events"] == 3
        lag = behind["lag_seconds"]
        assert isinstance(lag, float)
        assert lag > 0  # the first event in hand was recorded before now
        assert behind["version"] == projection.version
        assert (behind["parked_events"], behind["last_error"]) == (0, "")

        views.gate.set()
        live = await eventually(
            lambda: status_of(views), lambda s: s.get("state") == "LIVE", "went LIVE"
        )
        assert (live["checkpoint_position"], live["head_position"]) == (3, 3)
        assert (live["lag_events"], live["lag_seconds"]) == (0, 0.0)
        rate = live["events_per_second"]
        assert isinstance(rate, float)
        assert rate > 0  # three events applied within the window
        assert (await stores.views.get(ACCOUNTS, account_id) or {})["balance_minor"] == 350

        # New events: the head moves, the projector follows and is LIVE again.
        await append_account_events(stores.events, new_id(), [5])
        again = await eventually(
            lambda: status_of(views),
            lambda s: s.get("checkpoint_position") == 5 and s.get("state") == "LIVE",
            "followed the new events",
        )
        assert again["head_position"] == 5

        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stopped = await status_of(views)
    assert stopped["state"] == "STOPPED"
    assert stopped["checkpoint_position"] == 5
    assert runner.state.value == "STOPPED"


async def test_an_error_it_cannot_ride_out_is_reported_as_failed(stores: Stores) -> None:
    views = GatedViews(stores.views)
    await append_account_events(stores.events, new_id(), [1])
    views.failure = RuntimeError("document written by someone else")
    runner = ProjectionRunner(stores.events, views, projection, status_interval=0.01)
    with pytest.raises(RuntimeError, match="someone else"):
        await asyncio.wait_for(runner.run(), 30)
    failed = await status_of(views)
    assert failed["state"] == "FAILED"
    assert failed["last_error"] == "RuntimeError: document written by someone else"
    assert failed["checkpoint_position"] == 0
    assert await stores.views.checkpoint(NAME) == 0


async def test_a_store_outage_is_the_last_error_and_the_projector_rides_it_out(
    stores: Stores,
) -> None:
    views = GatedViews(stores.views)
    await append_account_events(stores.events, new_id(), [1])
    views.failure = Unavailable("view store unreachable")
    runner = ProjectionRunner(stores.events, views, projection, status_interval=0.01)
    async with running(runner):
        down = await eventually(
            lambda: status_of(views),
            lambda s: s.get("last_error") == "view store unreachable",
            "reported the outage",
        )
        assert down["state"] == "CATCHING_UP"
        views.failure = None
        live = await eventually(
            lambda: status_of(views), lambda s: s.get("state") == "LIVE", "recovered"
        )
        assert live["checkpoint_position"] == 2


@pytest.mark.e2e
async def test_get_projection_status_over_grpc_with_real_processes(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.start()
        async with connect(stack.command_target, stack.query_target) as client:
            opened = await client.open()

            async def status() -> qry.ProjectionStatus:
                response = await client.queries.GetProjectionStatus(
                    qry.GetProjectionStatusRequest(min_position=opened.position)
                )
                assert [p.name for p in response.projections] == [NAME]
                return response.projections[0]

            live = await eventually(
                status,
                lambda s: (
                    s.state == qry.PROJECTION_STATE_LIVE
                    and s.checkpoint_position >= opened.position
                ),
                "reported LIVE",
            )
            assert live.version == projection.version
            assert live.head_position == live.checkpoint_position
            assert (live.lag_events, live.lag_seconds) == (0, 0.0)
            assert (live.parked_events, live.last_error) == (0, "")
            assert live.HasField("updated_at")

            stack[PROJECTOR].stop()
            stopped = await status()
            assert stopped.state == qry.PROJECTION_STATE_STOPPED

            # Another producer writes a malformed event; the projector parks it and goes on.
            events = SqliteEventStore(stack.data_dir / "events.sqlite3")
            await events.open()
            try:
                # (in a stream of its own: the command side could not load it either)
                bad = await append_malformed_deposit(events, new_id())
            finally:
                await events.close()
            stack[PROJECTOR].start()
            after = await client.deposit(opened.account_id, 70)
            parked = await eventually(
                status,
                lambda s: s.parked_events == 1 and s.checkpoint_position >= after.position,
                "reported the parked event",
            )
            assert f"event at position {bad.position}" in parked.last_error
            assert "JSONDecodeError" in parked.last_error
            account = await client.account(opened.account_id, min_position=after.position)
            assert account.balance_minor == 70
        (record,) = [r for r in stack[PROJECTOR].records() if r.get("msg") == "event parked"]
        assert (record["position"], record["level"]) == (bad.position, "error")
        assert record["type"] == "V1.FundsDeposited"
    finally:
        stack.close()
    assert log_records(stack[PROJECTOR].stdout_path)  # the last run logged as JSON lines
