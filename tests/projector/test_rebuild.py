"""Rebuilds: a new generation of the views is built beside the live one, then switched to.

On real SQLite stores, in process (the supervisor the projector runs), plus the
operator's progress display; tests/e2e/test_rebuild.py does it with real processes
while queries are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
from collections.abc import AsyncIterator

import pytest

from ledger.banking.views import ACCOUNTS, COLLECTIONS, projection
from ledger.generations import (
    GENERATIONS,
    ActiveGenerationFollower,
    Generation,
    Generations,
    GenerationViews,
    load,
    request_rebuild,
    save,
)
from ledger.parking import utc_now
from ledger.projection import Projection
from ledger.projection_runner import ProjectionRunner
from ledger.projection_supervisor import ProjectionSupervisor, ViewsAreNewer
from ledger.rebuild_progress import Progress, Sample, Terminal, follow_rebuild
from ledger.views.port import KEY, Checkpoint, Document, ViewStore
from tests.projector import Stores, append_account_events, eventually
from tests.support import new_id

G0 = projection.first_generation
G1 = Generation(projection.name, 1, projection.version)


@contextlib.asynccontextmanager
async def supervising(
    stores: Stores, the_projection: Projection = projection, *, drop_grace: float = 0.2
) -> AsyncIterator[ProjectionSupervisor]:
    await stores.views.create([GENERATIONS])
    supervisor = ProjectionSupervisor(
        stores.events,
        stores.views,
        the_projection,
        poll_interval=0.02,
        drop_grace=drop_grace,
        status_interval=0.02,
    )
    task = asyncio.create_task(supervisor.run())
    try:
        yield supervisor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def generations(stores: Stores) -> Generations:
    found, _ = await load(stores.views, projection.name, projection.version)
    return found


async def everything(views: ViewStore, generation: Generation) -> dict[str, list[Document]]:
    """Every document of every banking view in one generation."""
    seen = GenerationViews(views, generation)
    return {
        c.name: await seen.find(c.name, where={}, order_by=KEY, limit=10_000) for c in COLLECTIONS
    }


async def test_a_rebuild_builds_beside_switches_and_drops_the_old_views(stores: Stores) -> None:
    accounts = [new_id() for _ in range(3)]
    for i, account_id in enumerate(accounts):
        head = await append_account_events(stores.events, account_id, [100 * (i + 1), 7])
    async with supervising(stores, drop_grace=0.3) as supervisor:
        await eventually(
            lambda: stores.views.checkpoint(G0.name), lambda p: p == head.position, "live"
        )
        before = await everything(stores.views, G0)
        assert len(before[ACCOUNTS]) == 3
        await request_rebuild(stores.views, projection.name, utc_now())

        switched = await eventually(
            lambda: generations(stores), lambda g: g.active == G1, "switched to generation 1"
        )
        assert switched.retired == G0
        assert switched.building is None
        assert supervisor.live is not None
        assert supervisor.live.generation == G1
        assert await everything(stores.views, G1) == before
        await eventually(lambda: generations(stores), lambda g: g.retired is None, "dropped g0")

        # The old generation is gone: its checkpoint, its status, its documents.
        assert G0.name not in [c.name for c in await stores.views.checkpoints()]
        assert G0.name not in [s[KEY] for s in await stores.views.statuses()]
        await stores.views.create(G0.collections(projection.collections))
        assert all(docs == [] for docs in (await everything(stores.views, G0)).values())

        # The new generation is live: later events land in it.
        more = await append_account_events(stores.events, new_id(), [5])
        await eventually(
            lambda: stores.views.checkpoint(G1.name), lambda p: p == more.position, "g1 live"
        )
        status = {s[KEY]: s for s in await stores.views.statuses()}[G1.name]
        assert status["state"] == "LIVE"


async def test_a_rebuild_reports_rebuilding_while_it_builds(stores: Stores) -> None:
    for _ in range(20):
        await append_account_events(stores.events, new_id(), [1] * 20)
    async with supervising(stores) as supervisor:
        await eventually(lambda: stores.views.checkpoint(G0.name), lambda p: p == 420, "live on g0")
        await request_rebuild(stores.views, projection.name, utc_now())
        await eventually(lambda: asyncio.sleep(0, supervisor.building), bool, "building")
        assert supervisor.building is not None
        assert supervisor.building.state.value == "REBUILDING"
        await eventually(lambda: generations(stores), lambda g: g.active == G1, "switched")


async def test_a_newer_projection_version_rebuilds_on_its_own(stores: Stores) -> None:
    account_id = new_id()
    await append_account_events(stores.events, account_id, [40, 2])
    async with supervising(stores):
        await eventually(lambda: stores.views.checkpoint(G0.name), lambda p: p == 3, "v2 live")

    newer = copy.copy(projection)
    newer.version = projection.version + 1
    async with supervising(stores, newer) as supervisor:
        g = await eventually(
            lambda: generations(stores), lambda g: g.active.version == newer.version, "v3"
        )
        assert g.active == Generation(projection.name, 1, newer.version)
        assert g.active.name == f"{projection.name}-v{newer.version}-g1"
        assert supervisor.live is not None
        assert supervisor.live.generation == g.active
        doc = await GenerationViews(stores.views, g.active).get(ACCOUNTS, account_id)
        assert doc is not None
        assert doc["balance_minor"] == 42

    # The older code now refuses to write into views it does not understand.
    older = ProjectionSupervisor(stores.events, stores.views, projection)
    with pytest.raises(ViewsAreNewer, match="newer code"):
        await older.run()


async def test_views_from_before_generations_are_rebuilt_at_a_newer_version(
    stores: Stores,
) -> None:
    """Views made before the control document existed (by a runner alone, as every
    projector did then) name their version only in their checkpoint. Newer code takes
    them for that version and rebuilds, rather than for its own: upserts conditional on
    positions the old documents already reflect would leave those as they were."""
    account_id = new_id()
    head = await append_account_events(stores.events, account_id, [40, 2])
    older = copy.copy(projection)
    older.version = projection.version - 1
    task = asyncio.create_task(ProjectionRunner(stores.events, stores.views, older).run())
    try:
        await eventually(
            lambda: stores.views.checkpoint(older.first_generation.name),
            lambda p: p == head.position,
            "the older views live",
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await stores.views.create([GENERATIONS])  # as the projector and query server do
    found, stored = await load(stores.views, projection.name, projection.version)
    assert (found.active.version, stored) == (older.version, False)

    async with supervising(stores):
        await eventually(lambda: generations(stores), lambda g: g.active == G1, "rebuilt")
    doc = await GenerationViews(stores.views, G1).get(ACCOUNTS, account_id)
    assert doc is not None
    assert doc["balance_minor"] == 42


async def test_a_build_interrupted_resumes_from_its_own_checkpoint(stores: Stores) -> None:
    for _ in range(10):
        last = await append_account_events(stores.events, new_id(), [3] * 30)
    await stores.views.create([GENERATIONS])
    # As a crash leaves it: generation 1 started, part-built, not switched.
    await save(stores.views, Generations(active=G0, building=G1, next_number=2))
    await stores.views.create(G1.collections(projection.collections))
    await stores.views.apply([], Checkpoint(G1.name, 0))
    async with supervising(stores) as supervisor:
        g = await eventually(lambda: generations(stores), lambda g: g.active == G1, "switched")
        assert g.next_number == 2  # resumed generation 1, did not start a generation 2
        assert supervisor.live is not None
        await eventually(
            lambda: stores.views.checkpoint(G1.name), lambda p: p == last.position, "caught up"
        )


async def test_readers_switch_only_once_the_new_views_have_caught_up(stores: Stores) -> None:
    await stores.views.create([GENERATIONS, *G1.collections(projection.collections)])
    await stores.views.apply([], Checkpoint(G0.name, 50))
    await stores.views.apply([], Checkpoint(G1.name, 40))
    views = GenerationViews(stores.views, G0)
    follower = ActiveGenerationFollower(
        views, projection.name, projection.version, projection.collections
    )
    await follower.start()
    assert views.generation == G0
    await save(stores.views, Generations(active=G1, retired=G0, next_number=2))
    assert not await follower.refresh()  # g1 is behind what readers already saw
    assert views.generation == G0
    await stores.views.apply([], Checkpoint(G1.name, 50))
    assert await follower.refresh()
    assert views.generation == G1


def test_progress_reports_rate_share_and_time_left() -> None:
    progress = Progress()
    progress.add(Sample(at=10.0, applied=1_000, position=1_000, head=10_000))
    progress.add(Sample(at=12.0, applied=5_000, position=5_000, head=10_000))
    assert progress.events_per_second() == 2_000
    assert progress.seconds_left() == 2.5
    line = progress.line("banking-v2-g1")
    assert line == (
        "rebuilding banking-v2-g1: 5,000 events applied, position 5,000 of 10,000 (50%),"
        " 2,000 events/s, about 2 s to go"
    )


async def test_the_rebuild_command_follows_it_to_the_switch(stores: Stores) -> None:
    for _ in range(30):
        await append_account_events(stores.events, new_id(), [1] * 30)
    out = io.StringIO()
    async with supervising(stores):
        request = await request_rebuild(stores.views, projection.name, utc_now())
        code = await follow_rebuild(
            stores.views,
            projection.name,
            projection.version,
            request,
            Terminal(out, every=0.0),
            pickup_timeout=30.0,
            interval=0.01,
        )
    text = out.getvalue()
    assert code == 0, text
    assert f"the projector is building {G1.name} beside {G0.name}" in text
    assert f"switched: readers now use {G1.name}" in text


async def test_the_rebuild_command_gives_up_when_no_projector_takes_it(stores: Stores) -> None:
    await stores.views.create([GENERATIONS])
    out = io.StringIO()
    request = await request_rebuild(stores.views, projection.name, utc_now())
    code = await follow_rebuild(
        stores.views,
        projection.name,
        projection.version,
        request,
        Terminal(out),
        pickup_timeout=0.05,
        interval=0.01,
    )
    assert code == 1
    assert "no projector took the request up" in out.getvalue()
