"""Keeps a projection's views up to date from the event log.

It resumes from the checkpoint stored *with* the views, applies each subscription
batch and the new checkpoint in one view-store write, and on stop finishes the batch
in hand first: a kill at any instant leaves views equal to a rebuild up to the
checkpoint, and the next start carries on from there.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ledger.errors import Unavailable
from ledger.eventstore.port import EventStore
from ledger.projection import Projection
from ledger.views.port import Checkpoint, ViewStore

log = logging.getLogger("ledger.projector")


class ProjectionRunner:
    def __init__(self, events: EventStore, views: ViewStore, projection: Projection) -> None:
        self._events = events
        self._views = views
        self._projection = projection
        self.position = 0
        self.applied = 0

    async def run(self, *, max_delay: float = 10.0) -> None:
        """Run until cancelled, riding out store outages by resuming from the checkpoint."""
        delay = 0.2
        while True:
            applied_before = self.applied
            try:
                await self._follow()
            except Unavailable as exc:
                if self.applied != applied_before:
                    delay = 0.2
                log.warning(
                    f"store unavailable, resuming from the checkpoint in {delay:.1f}s",
                    extra={"projection": self._projection.checkpoint_name, "error": exc.message},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def _follow(self) -> None:
        """Apply batches from the stored checkpoint on; a cancellation never splits a batch."""
        name = self._projection.checkpoint_name
        self.position = await self._views.checkpoint(name)
        log.info("projection starting", extra={"projection": name, "position": self.position})
        subscription = self._events.subscribe(
            self.position, stream_prefixes=self._projection.stream_prefixes
        )
        async for batch in subscription:
            started = time.perf_counter()
            upserts = [u for r in batch.events for u in self._projection.upserts_for(r)]
            write = asyncio.ensure_future(
                self._views.apply(upserts, Checkpoint(name, batch.position))
            )
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await write  # let the batch land with its checkpoint, then stop
                raise
            self.position = batch.position
            self.applied += len(batch.events)
            log.debug(
                "batch applied",
                extra={
                    "projection": name,
                    "events": len(batch.events),
                    "position": batch.position,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
