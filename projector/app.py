"""Runs the banking projection until SIGTERM, then stops after the batch in hand."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ledger.backends import event_store_from_env, view_store_from_env
from ledger.banking.views import projection
from ledger.eventstore.pacing import LIVE_PACE
from ledger.generations import GENERATIONS, MIN_DROP_GRACE
from ledger.grpc.server import open_with_retry, stop_event_on_signals
from ledger.healthcheck import heartbeat, heartbeat_path
from ledger.projection_supervisor import ProjectionSupervisor, ViewsAreNewer
from ledger.settings import Env, env_float

log = logging.getLogger("ledger.projector")


async def run(env: Env) -> int:
    events = event_store_from_env(env)
    views = view_store_from_env(env)
    drop_grace = env_float(
        env, "LEDGER_VIEW_DROP_GRACE_SECONDS", 10.0, minimum=MIN_DROP_GRACE, maximum=86_400.0
    )
    live_pace = env_float(
        env, "LEDGER_PROJECTOR_LIVE_PACE_SECONDS", LIVE_PACE, minimum=0.0, maximum=1.0
    )
    stop = stop_event_on_signals()
    try:
        if not await open_with_retry("event store", events.open, stop):
            return 0
        if not await open_with_retry("view store", lambda: views.open([GENERATIONS]), stop):
            return 0
        supervisor = ProjectionSupervisor(
            events, views, projection, drop_grace=drop_grace, live_pace=live_pace
        )

        def status() -> str:
            runners = [r for r in (supervisor.live, supervisor.building) if r is not None]
            return " ".join(
                f"{r.name}: position={r.position} applied={r.applied}"
                f" state={r.state.value} parked={r.parked}"
                for r in runners
            )

        # The container health check reads this file (python -m ledger.healthcheck --projector).
        async with heartbeat(heartbeat_path(env), status):
            task = asyncio.create_task(supervisor.run(), name="projection")
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                stopper.cancel()
                try:
                    task.result()  # surfaces the failure
                except ViewsAreNewer as exc:
                    log.error("projector refuses to run", extra={"error": str(exc)})
                return 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        live = supervisor.live
        log.info(
            "projector stopped",
            extra={
                "projection": live.name if live else "",
                "position": live.position if live else 0,
                "applied": live.applied if live else 0,
            },
        )
        return 0
    finally:
        await events.close()
        await views.close()
