"""`python -m projector parked | retry`: the operator's view of parked events.

Both open the stores the projector uses (same environment), do their work and exit:
0 when done (for `retry`: every event retried now applies), 1 when a store cannot be
reached or a retried event still fails, 2 on a configuration error. Output is plain
text on stdout, one line per event.
"""

from __future__ import annotations

import asyncio
import sys

from ledger.backends import event_store_from_env, view_store_from_env
from ledger.banking.views import projection
from ledger.errors import Unavailable
from ledger.parking import ParkedEvent, parked_events, retry_parked
from ledger.settings import Env, SettingsError, current


def _line(event: ParkedEvent) -> str:
    return (
        f"position={event.position} stream={event.stream} version={event.version}"
        f" type={event.type} event_id={event.event_id} parked_at={event.parked_at}"
        f" attempts={event.attempts} error={event.error!r}"
    )


async def _parked(env: Env) -> int:
    views = view_store_from_env(env)
    await views.open(projection.collections)
    try:
        found = await parked_events(views, projection.checkpoint_name)
    finally:
        await views.close()
    for event in found:
        print(_line(event))
    print(f"{len(found)} parked event(s) in {projection.checkpoint_name}")
    return 0


async def _retry(env: Env, position: int | None) -> int:
    events = event_store_from_env(env)
    views = view_store_from_env(env)
    try:
        await events.open()
        await views.open(projection.collections)
        outcomes = await retry_parked(events, views, projection, position=position)
    finally:
        await events.close()
        await views.close()
    for outcome in outcomes:
        verdict = "applied" if outcome.error is None else f"still fails: {outcome.error}"
        print(f"position={outcome.event.position} stream={outcome.event.stream} {verdict}")
    failed = sum(1 for o in outcomes if o.error is not None)
    print(f"{len(outcomes) - failed} applied, {failed} still parked")
    if position is not None and not outcomes:
        print(f"no parked event at position {position}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def run_command(command: str, position: int | None) -> int:
    env = current()
    try:
        if command == "parked":
            return asyncio.run(_parked(env))
        return asyncio.run(_retry(env, position))
    except SettingsError as exc:
        print(f"projector: configuration error: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"projector: {exc.message}", file=sys.stderr)
        return 1
