"""Runs the banking projection until SIGTERM, then stops after the batch in hand."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ledger.backends import event_store_from_env, view_store_from_env
from ledger.banking.views import projection
from ledger.grpc.server import open_with_retry, stop_event_on_signals
from ledger.healthcheck import heartbeat, heartbeat_path
from ledger.projection_runner import ProjectionRunner
from ledger.settings import Env

log = logging.getLogger("ledger.projector")


async def run(env: Env) -> int:
    events = event_store_from_env(env)
    views = view_store_from_env(env)
    stop = stop_event_on_signals()
    try:
        if not await open_with_retry("event store", events.open, stop):
            return 0
        if not await open_with_retry(
            "view store", lambda: views.open(projection.collections), stop
        ):
            return 0
        runner = ProjectionRunner(events, views, projection)

        def status() -> str:
            return (
                f"position={runner.position} applied={runner.applied}"
                f" state={runner.state.value} parked={runner.parked}"
            )

        # The container health check reads this file (python -m ledger.healthcheck --projector).
        async with heartbeat(heartbeat_path(env), status):
            task = asyncio.create_task(runner.run(), name="projection")
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                stopper.cancel()
                task.result()  # surfaces the failure
                return 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info(
            "projector stopped", extra={"position": runner.position, "applied": runner.applied}
        )
        return 0
    finally:
        await events.close()
        await views.close()
