"""Generations of a projection's views: a rebuild fills new ones beside the live ones.

A *generation* is one build of a projection's views from the log: its own collections
and its own checkpoint. Readers use the *active* generation named by a small control
document (collection `view_generations`, keyed by the projection's name) that only the
projector writes; an operator asks for a rebuild through a second document
(`<name>/rebuild`) that only operators write, so neither ever overwrites the other.

Generation 0 keeps the bare collection names and the `<name>-v<version>` checkpoint
(the layout from before generations existed, so existing stores need no migration);
generation n > 0 suffixes `_g<n>` to both. Numbers only grow, so a generation's
collections are never reused once dropped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ledger.errors import Unavailable
from ledger.views.port import (
    Changes,
    Checkpoint,
    Collection,
    Document,
    Scalar,
    StatusValue,
    Upsert,
    ViewStore,
)

GENERATIONS = Collection("view_generations")
READER_INTERVAL = 1.0
"""Seconds between a reader's looks at which generation is active."""
MIN_DROP_GRACE = 3 * READER_INTERVAL
"""The least time a replaced generation may stay: readers may need one interval to see
the switch, and the reads they started before it must still find the old views."""
log = logging.getLogger("ledger.generations")


@dataclass(frozen=True, slots=True)
class Generation:
    projection: str
    number: int
    version: int

    @property
    def name(self) -> str:
        """Its checkpoint's (and status record's) name."""
        suffix = f"-g{self.number}" if self.number else ""
        return f"{self.projection}-v{self.version}{suffix}"

    def physical(self, collection: str) -> str:
        return f"{collection}_g{self.number}" if self.number else collection

    def collections(self, declared: Sequence[Collection]) -> tuple[Collection, ...]:
        return tuple(replace(c, name=self.physical(c.name)) for c in declared)


@dataclass(frozen=True, slots=True)
class Generations:
    """The control document: which generation is active, which is being built, which
    waits to be dropped, and the last rebuild request taken up."""

    active: Generation
    building: Generation | None = None
    retired: Generation | None = None
    retired_at: str = ""
    next_number: int = 1
    handled_request: str = ""

    def fields(self) -> dict[str, Scalar]:
        def number(g: Generation | None) -> int:
            return -1 if g is None else g.number

        def version(g: Generation | None) -> int:
            return -1 if g is None else g.version

        return {
            "active": self.active.number,
            "active_version": self.active.version,
            "building": number(self.building),
            "building_version": version(self.building),
            "retired": number(self.retired),
            "retired_version": version(self.retired),
            "retired_at": self.retired_at,
            "next": self.next_number,
            "handled_request": self.handled_request,
        }

    @classmethod
    def from_document(cls, projection: str, doc: Mapping[str, Any]) -> Generations:
        def generation(prefix: str) -> Generation | None:
            number, version = doc.get(prefix), doc.get(f"{prefix}_version")
            if not isinstance(number, int) or not isinstance(version, int) or number < 0:
                return None
            return Generation(projection, number, version)

        active = generation("active")
        if active is None:
            raise ValueError(f"the generations document of {projection!r} names no active one")
        return cls(
            active=active,
            building=generation("building"),
            retired=generation("retired"),
            retired_at=str(doc.get("retired_at") or ""),
            next_number=int(doc.get("next") or active.number + 1),
            handled_request=str(doc.get("handled_request") or ""),
        )


def initial(projection: str, version: int) -> Generations:
    return Generations(active=Generation(projection, 0, version))


async def load(views: ViewStore, projection: str, version: int) -> tuple[Generations, bool]:
    """The stored control document, or, if there is none yet (and False: not stored),
    generation 0 at the version its checkpoint names (views from before generations
    existed, to be rebuilt if older), else at `version` (a new store)."""
    doc = await views.get(GENERATIONS.name, projection)
    if doc is None:
        return initial(projection, await _unrecorded_version(views, projection, version)), False
    return Generations.from_document(projection, doc), True


async def _unrecorded_version(views: ViewStore, projection: str, version: int) -> int:
    """The newest version with a generation 0 checkpoint (`<name>-v<version>`), if any:
    without it, newer code would take older views for its own and leave them as they are
    (every upsert conditional on a position they already reflect)."""
    pattern = re.compile(rf"{re.escape(projection)}-v(\d+)")
    found = [int(m[1]) for c in await views.checkpoints() if (m := pattern.fullmatch(c.name))]
    return max(found, default=version)


async def save(views: ViewStore, generations: Generations) -> None:
    await views.put(GENERATIONS.name, generations.active.projection, generations.fields())


def request_key(projection: str) -> str:
    return f"{projection}/rebuild"


async def request_rebuild(views: ViewStore, projection: str, now: datetime) -> str:
    """Ask the projector for a new generation; the returned id shows when it took it up."""
    request = uuid.uuid4().hex
    await views.put(
        GENERATIONS.name,
        request_key(projection),
        {"request": request, "requested_at": now.isoformat()},
    )
    return request


async def pending_request(views: ViewStore, projection: str, handled: str) -> str | None:
    doc = await views.get(GENERATIONS.name, request_key(projection))
    request = None if doc is None else doc.get("request")
    return request if isinstance(request, str) and request and request != handled else None


class GenerationViews:
    """A view store seen through one generation: callers name collections as their
    projection declares them, and this maps them to the generation's own.

    `generation` may be switched (the query server does, when the active one changes);
    each call maps through the generation current at that call."""

    def __init__(self, inner: ViewStore, generation: Generation) -> None:
        self.inner = inner
        self.generation = generation

    async def open(self, collections: Sequence[Collection]) -> None:
        await self.inner.open(self.generation.collections(collections))

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, collections: Sequence[Collection]) -> None:
        await self.inner.create(self.generation.collections(collections))

    async def drop(self, collections: Sequence[str], checkpoint: str) -> None:
        await self.inner.drop([self.generation.physical(c) for c in collections], checkpoint)

    async def put(self, collection: str, key: str, fields: Mapping[str, Scalar]) -> None:
        await self.inner.put(self.generation.physical(collection), key, fields)

    async def apply(self, upserts: Sequence[Upsert], checkpoint: Checkpoint) -> None:
        generation = self.generation
        if generation.number:
            upserts = [replace(op, collection=generation.physical(op.collection)) for op in upserts]
        await self.inner.apply(upserts, checkpoint)

    async def checkpoint(self, name: str) -> int:
        return await self.inner.checkpoint(name)

    async def checkpoints(self) -> list[Checkpoint]:
        return await self.inner.checkpoints()

    async def save_status(self, name: str, fields: Mapping[str, StatusValue]) -> None:
        await self.inner.save_status(name, fields)

    async def statuses(self) -> list[dict[str, StatusValue]]:
        return await self.inner.statuses()

    async def get(self, collection: str, key: str) -> Document | None:
        return await self.inner.get(self.generation.physical(collection), key)

    def change_watcher(self) -> Changes | None:
        return self.inner.change_watcher()

    async def find(
        self,
        collection: str,
        *,
        where: Mapping[str, Scalar],
        order_by: str,
        after: Scalar = None,
        at_most: Scalar = None,
        descending: bool = False,
        limit: int,
        key_prefix: str = "",
    ) -> list[Document]:
        return await self.inner.find(
            self.generation.physical(collection),
            where=where,
            order_by=order_by,
            after=after,
            at_most=at_most,
            descending=descending,
            limit=limit,
            key_prefix=key_prefix,
        )

    async def find_rendered(
        self, collection: str, *, key_prefix: str, after: str | None = None, limit: int
    ) -> list[tuple[str, bytes]]:
        return await self.inner.find_rendered(
            self.generation.physical(collection), key_prefix=key_prefix, after=after, limit=limit
        )


class ActiveGenerationFollower:
    """Keeps a reader's GenerationViews on the active generation.

    It switches only once the new generation's checkpoint has reached the one it
    replaces, so a reader never answers from views older than it already has. (The
    projector only switches generations that have; this makes it the reader's own
    guarantee.) The old generation is dropped a grace period later, by which time every
    reader looking once per `interval` has moved."""

    def __init__(
        self,
        views: GenerationViews,
        projection: str,
        version: int,
        collections: Sequence[Collection],
        *,
        interval: float = READER_INTERVAL,
    ) -> None:
        self._views = views
        self._projection = projection
        self._version = version
        self._collections = collections
        self._interval = interval

    async def start(self) -> None:
        """Take the active generation as it is now, before serving anything (creating its
        collections if no projector has yet, so that reads find them empty)."""
        generations, _ = await load(self._views.inner, self._projection, self._version)
        self._views.generation = generations.active
        await self._views.create(self._collections)

    async def refresh(self) -> bool:
        """Look once; True if the views switched."""
        inner, current = self._views.inner, self._views.generation
        generations, _ = await load(inner, self._projection, self._version)
        active = generations.active
        if active == current:
            return False
        if await inner.checkpoint(active.name) < await inner.checkpoint(current.name):
            return False  # not there yet: keep reading the old one, look again
        self._views.generation = active
        log.info("views switched", extra={"projection": active.name, "replaced": current.name})
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Unavailable as exc:
                log.debug("active generation not read", extra={"error": exc.message})
