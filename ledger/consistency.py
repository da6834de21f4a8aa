"""Read-your-writes: hold a query until the views have reached a log position.

One follower per process watches the checkpoint and wakes every waiting call, so a
thousand waiting queries cost one poll, and the poll runs only while someone waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ledger.errors import Unavailable

PROJECTION_BEHIND = "PROJECTION_BEHIND"


class CheckpointFollower:
    def __init__(
        self, read_position: Callable[[], Awaitable[int]], *, interval: float = 0.002
    ) -> None:
        self._read_position = read_position
        self._interval = interval
        self.position = 0
        self._changed = asyncio.Condition()
        self._waiters = 0
        self._poller: asyncio.Task[None] | None = None

    async def refresh(self) -> int:
        position = await self._read_position()
        if position != self.position:
            self.position = position
            async with self._changed:
                self._changed.notify_all()
        return position

    async def _poll(self) -> None:
        while self._waiters:
            await self.refresh()
            await asyncio.sleep(self._interval)
        self._poller = None

    async def wait_for(self, position: int, budget: float) -> bool:
        """True once the checkpoint is at or past `position`; False after `budget` seconds."""
        if position <= self.position or position <= await self.refresh():
            return True
        self._waiters += 1
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())
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
