"""Keeps a projection's active views live and rebuilds them beside it, without downtime.

The projector runs one supervisor per projection. It runs the active generation of the
views (ledger.generations) and, when an operator asks for a rebuild or this code's
projection version is newer than the active generation's (a view-schema change ships
this way), builds a new generation from the start of the log with a second runner
while readers keep using the old one. Once the new one has reached the live one, it
stops the live runner (after its batch in hand), lets the new one pass the position
where the old one stopped, and names the new generation active in one write. Query
servers look at that document every second and switch only once the new checkpoint
is at least the old one, so no read goes back in time. The old generation is dropped
after a grace period that covers readers still on it.

Each step is written to the control document before it takes effect, so a crash at
any point resumes where it was: a build carries on from its own checkpoint, a switch
that did not happen happens later, a retired generation is still dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from ledger.errors import Unavailable
from ledger.eventstore.pacing import LIVE_PACE
from ledger.eventstore.port import EventStore
from ledger.generations import Generation, Generations, load, pending_request, save
from ledger.parking import utc_now
from ledger.projection import Projection
from ledger.projection_runner import ProjectionRunner
from ledger.views.port import ViewStore

log = logging.getLogger("ledger.projector")
SWITCH_POLL = 0.01
"""Seconds between looks while the new generation passes the stopped live one."""


class ViewsAreNewer(Exception):
    """The active views were built by a newer version of the projection than this code."""


class ProjectionSupervisor:
    def __init__(
        self,
        events: EventStore,
        views: ViewStore,
        projection: Projection,
        *,
        poll_interval: float = 1.0,
        drop_grace: float = 10.0,
        status_interval: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
        live_pace: float = LIVE_PACE,
    ) -> None:
        self._events = events
        self._views = views
        self._projection = projection
        self._poll_interval = poll_interval
        self._drop_grace = timedelta(seconds=drop_grace)
        self._status_interval = status_interval
        self._clock = clock
        self._live_pace = live_pace
        self.live: ProjectionRunner | None = None
        self.building: ProjectionRunner | None = None
        self._tasks: dict[ProjectionRunner, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Run until cancelled; raises if a runner fails for good or the views are newer."""
        name, version = self._projection.name, self._projection.version
        generations, stored = await load(self._views, name, version)
        if generations.active.version > version:
            raise ViewsAreNewer(
                f"the active {name} views are version {generations.active.version}, built by"
                f" newer code than this projector (version {version}); run the newer projector"
            )
        if generations.building is not None and generations.building.version != version:
            generations = await self._abandon(generations, generations.building)
        if not stored:
            await save(self._views, generations)
        try:
            if generations.active.version == version:
                self.live = await self._start(generations.active, rebuilding=False)
            # else: older views stay served (kept current by an older projector, if one
            # still runs) while this one builds the new version.
            if generations.building is not None:
                self.building = await self._start(generations.building, rebuilding=True)
            while True:
                try:
                    generations = await self._step(generations)
                except Unavailable as exc:  # the runners ride it out; so does this
                    log.warning("view store unavailable", extra={"error": exc.message})
                await self._pause()
        finally:
            for runner in list(self._tasks):
                await self._stop(runner)

    async def _pause(self) -> None:
        """Wait a poll interval; a runner that ended (it failed) ends the supervisor."""
        if not self._tasks:  # a build about to start (older views, no live runner here)
            await asyncio.sleep(self._poll_interval)
            return
        await asyncio.wait(
            self._tasks.values(), timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED
        )
        for task in self._tasks.values():
            if task.done():
                task.result()  # raises why it stopped
                raise RuntimeError("a projection runner stopped on its own")

    async def _step(self, generations: Generations) -> Generations:
        if generations.retired is not None and self._due(generations.retired_at):
            generations = await self._drop(generations, generations.retired)
        if self.building is None:
            if generations.retired is None:  # one rebuild at a time, old views gone first
                generations = await self._maybe_build(generations)
        elif await self._caught_up(self.building):
            generations = await self._switch(generations, self.building)
        return generations

    def _due(self, retired_at: str) -> bool:
        try:
            since = datetime.fromisoformat(retired_at)
        except ValueError:
            return True
        return self._clock() - since >= self._drop_grace

    async def _maybe_build(self, generations: Generations) -> Generations:
        version = self._projection.version
        request = await pending_request(
            self._views, self._projection.name, generations.handled_request
        )
        if request is None and generations.active.version >= version:
            return generations
        new = Generation(self._projection.name, generations.next_number, version)
        generations = replace(
            generations,
            building=new,
            next_number=new.number + 1,
            handled_request=request or generations.handled_request,
        )
        await save(self._views, generations)  # recorded first; _start creates its collections
        why = "requested" if request else f"views at version {generations.active.version}"
        log.info(
            "rebuild started",
            extra={"projection": new.name, "replacing": generations.active.name, "why": why},
        )
        self.building = await self._start(new, rebuilding=True)
        return generations

    async def _caught_up(self, building: ProjectionRunner) -> bool:
        if self.live is not None:
            target = self.live.position
        else:
            target = await self._events.head_position(
                stream_prefixes=self._projection.stream_prefixes
            )
        return building.position >= target

    async def _switch(self, generations: Generations, building: ProjectionRunner) -> Generations:
        """Stop the live runner, let the new generation pass it, then make it active."""
        if self.live is not None:
            await self._stop(self.live)
            stopped_at = self.live.position
            while building.position < stopped_at:
                await asyncio.sleep(SWITCH_POLL)
                if self._tasks[building].done():
                    return generations  # _pause reports why
        old = generations.active
        generations = replace(
            generations,
            active=building.generation,
            building=None,
            retired=old,
            retired_at=self._clock().isoformat(),
        )
        await save(self._views, generations)
        building.promote()
        self.live, self.building = building, None
        log.info(
            "views switched",
            extra={
                "projection": building.name,
                "replaced": old.name,
                "position": building.position,
            },
        )
        return generations

    async def _drop(self, generations: Generations, retired: Generation) -> Generations:
        await self._drop_views(retired)
        generations = replace(generations, retired=None, retired_at="")
        await save(self._views, generations)
        log.info("old views dropped", extra={"projection": retired.name})
        return generations

    async def _abandon(self, generations: Generations, building: Generation) -> Generations:
        """A build another version of the code started: its views are not this code's."""
        await self._drop_views(building)
        log.warning(
            "unfinished rebuild of another version dropped", extra={"projection": building.name}
        )
        generations = replace(generations, building=None)
        await save(self._views, generations)
        return generations

    async def _drop_views(self, generation: Generation) -> None:
        collections = [c.name for c in generation.collections(self._projection.collections)]
        await self._views.drop(collections, generation.name)

    async def _start(self, generation: Generation, *, rebuilding: bool) -> ProjectionRunner:
        await self._views.create(generation.collections(self._projection.collections))
        runner = ProjectionRunner(
            self._events,
            self._views,
            self._projection,
            generation=generation,
            rebuilding=rebuilding,
            status_interval=self._status_interval,
            clock=self._clock,
            live_pace=self._live_pace,
        )
        self._tasks[runner] = asyncio.create_task(runner.run(), name=f"projection {runner.name}")
        return runner

    async def _stop(self, runner: ProjectionRunner) -> None:
        """Cancel it; it lands the batch in hand and publishes STOPPED first."""
        task = self._tasks.pop(runner)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure is logged
            await task
