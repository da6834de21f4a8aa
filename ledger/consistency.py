"""Read-your-writes and live streams: one follower of the views' checkpoint per process.

It wakes every waiting call and every watch stream when the checkpoint moves, so a
thousand waiting queries or watchers cost one poll, and the poll runs only while
someone waits or watches. Where the view store can tell when it changed (`changes`:
ViewStore.change_watcher, e.g. SQLite's), the follower waits on that instead
of polling every `interval`: an open watch stream on a quiet ledger then costs next to
nothing, where the 2 ms poll cost the query server about 7 % of a core. A watcher
reads what changed for it itself, from the views, on each wake-up: nothing is buffered
per watcher, and a slow one only reads more rows next time, never holding up the
others or the projector.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from ledger.errors import Unavailable
from ledger.views.port import Changes

PROJECTION_BEHIND = "PROJECTION_BEHIND"
RECHECK = 0.5
"""Seconds a follower waiting on `changes` goes without looking who still waits."""
SERVER_SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"


class CheckpointFollower:
    def __init__(
        self,
        read_position: Callable[[], Awaitable[int]],
        *,
        interval: float = 0.002,
        changes: Callable[[], Changes | None] | None = None,
    ) -> None:
        """`changes` makes what tells when the store changed (made on first use, kept
        until `close_watches`); without it, or if it makes None, the follower polls
        every `interval`."""
        self._read_position = read_position
        self._interval = interval
        self._new_changes = changes
        self._changes: Changes | None = None
        self.position = 0
        self._changed = asyncio.Condition()
        self._waiters = 0
        self._watchers = 0
        self._closing = False
        self._poller: asyncio.Task[None] | None = None
        self.poll_tasks_started = 0
        """How many poll loops have been started (one runs while anyone waits or watches)."""

    @property
    def watchers(self) -> int:
        return self._watchers

    @property
    def polling(self) -> bool:
        return self._poller is not None

    async def refresh(self) -> int:
        position = await self._read_position()
        if position != self.position:
            self.position = position
            async with self._changed:
                self._changed.notify_all()
        return position

    async def _poll(self) -> None:
        try:
            if self._changes is None and self._new_changes is not None:
                self._changes = self._new_changes()
            while self._waiters or self._watchers:  # waiters still finish in a drain
                await self.refresh()
                if self._changes is None:
                    await asyncio.sleep(self._interval)
                else:
                    await self._changes.wait(RECHECK)
        finally:
            self._poller = None
            if self._closing:
                self._close_changes()

    def _close_changes(self) -> None:
        if self._changes is not None:
            self._changes.close()
            self._changes = None

    def _ensure_polling(self) -> None:
        if self._poller is None:
            self.poll_tasks_started += 1
            self._poller = asyncio.create_task(self._poll(), name="checkpoint-follower")

    async def wait_for(self, position: int, budget: float) -> bool:
        """True once the checkpoint is at or past `position`; False after `budget` seconds."""
        if position <= self.position or position <= await self.refresh():
            return True
        self._waiters += 1
        self._ensure_polling()
        try:
            async with asyncio.timeout(max(budget, 0.0)), self._changed:
                await self._changed.wait_for(lambda: self.position >= position)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters -= 1

    async def require(self, position: int, budget: float) -> None:
        if position and not await self.wait_for(position, budget):
            raise Unavailable(
                f"the views have reached position {self.position}, not {position} yet;"
                " retry, or allow a longer deadline",
                reason=PROJECTION_BEHIND,
            )

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[Watch]:
        """Keep the poll running while the block runs; `Watch.next` awaits advances."""
        if self._closing:
            raise _shutting_down()
        self._watchers += 1
        self._ensure_polling()
        try:
            yield Watch(self)
        finally:
            self._watchers -= 1

    async def close_watches(self) -> None:
        """End every watch stream (and refuse new ones): the server is shutting down."""
        self._closing = True
        if self._poller is None:  # else the poll closes it when it ends
            self._close_changes()
        async with self._changed:
            self._changed.notify_all()

    async def _advanced_past(self, position: int) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self._closing or self.position > position)
        if self._closing:
            raise _shutting_down()
        return self.position


class Watch:
    """One watcher's view of the follower."""

    def __init__(self, follower: CheckpointFollower) -> None:
        self._follower = follower

    @property
    def position(self) -> int:
        """The checkpoint as last seen: every view row at or before it is complete."""
        return self._follower.position

    async def next(self, seen: int) -> int:
        """The checkpoint, once it is past `seen`; Unavailable when the server stops."""
        return await self._follower._advanced_past(seen)


def _shutting_down() -> Unavailable:
    return Unavailable(
        "the server is shutting down; reconnect to resume", reason=SERVER_SHUTTING_DOWN
    )
