"""`python -m projector parked | retry | rebuild`: operator commands beside the projector.

Each opens the stores the projector uses (same environment), does its work and exits:
0 when done (for `retry`: every event retried now applies; for `rebuild`: readers use
the new views), 1 when a store cannot be reached, a retried event still fails or the
rebuild failed or was not taken up, 2 on a configuration error. Output is plain text
on stdout; `rebuild` redraws one progress line on a terminal.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ledger.backends import event_store_from_env, view_store_from_env
from ledger.banking.views import projection
from ledger.errors import Unavailable
from ledger.generations import GENERATIONS, GenerationViews, load, request_rebuild
from ledger.parking import ParkedEvent, parked_events, retry_parked, utc_now
from ledger.rebuild_progress import Terminal, follow_rebuild
from ledger.settings import Env, SettingsError, current
from ledger.views.port import ViewStore


def _line(event: ParkedEvent) -> str:
    return (
        f"position={event.position} stream={event.stream} version={event.version}"
        f" type={event.type} event_id={event.event_id} parked_at={event.parked_at}"
        f" attempts={event.attempts} error={event.error!r}"
    )


@asynccontextmanager
async def _views(env: Env) -> AsyncIterator[ViewStore]:
    views = view_store_from_env(env)
    try:
        await views.open([GENERATIONS])
        yield views
    finally:
        await views.close()


async def _active(views: ViewStore) -> GenerationViews:
    """The views readers use now (parked events belong to a generation)."""
    generations, _ = await load(views, projection.name, projection.version)
    return GenerationViews(views, generations.active)


async def _parked(env: Env) -> int:
    async with _views(env) as store:
        views = await _active(store)
        name = views.generation.name
        await views.create(projection.collections)
        found = await parked_events(views, name)
    for event in found:
        print(_line(event))
    print(f"{len(found)} parked event(s) in {name}")
    return 0


async def _retry(env: Env, position: int | None) -> int:
    events = event_store_from_env(env)
    try:
        await events.open()
        async with _views(env) as store:
            views = await _active(store)
            await views.create(projection.collections)
            outcomes = await retry_parked(
                events, views, projection, position=position, name=views.generation.name
            )
    finally:
        await events.close()
    for outcome in outcomes:
        verdict = "applied" if outcome.error is None else f"still fails: {outcome.error}"
        print(f"position={outcome.event.position} stream={outcome.event.stream} {verdict}")
    failed = sum(1 for o in outcomes if o.error is not None)
    print(f"{len(outcomes) - failed} applied, {failed} still parked")
    if position is not None and not outcomes:
        print(f"no parked event at position {position}", file=sys.stderr)
        return 1
    return 1 if failed else 0


async def _rebuild(env: Env, wait: bool, pickup_timeout: float) -> int:
    async with _views(env) as views:
        request = await request_rebuild(views, projection.name, utc_now())
        out = Terminal(sys.stdout)
        out.say(f"rebuild of {projection.name} requested (request {request})")
        if not wait:
            return 0
        return await follow_rebuild(
            views,
            projection.name,
            projection.version,
            request,
            out,
            pickup_timeout=pickup_timeout,
        )


def run_command(
    command: str, *, position: int | None = None, wait: bool = True, pickup_timeout: float = 30.0
) -> int:
    env = current()
    try:
        if command == "parked":
            return asyncio.run(_parked(env))
        if command == "rebuild":
            return asyncio.run(_rebuild(env, wait, pickup_timeout))
        return asyncio.run(_retry(env, position))
    except SettingsError as exc:
        print(f"projector: configuration error: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"projector: {exc.message}", file=sys.stderr)
        return 1
