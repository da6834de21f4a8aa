"""Paced subscriptions: a reader at the head takes what comes in batches, not commit by commit.

Each batch costs its reader the same wake-up, reads and hand-offs (and a projector its
commit) whatever its size. Under load the event store commits every few milliseconds,
and a reader at the head that asks again at once gets one commit's events per batch: for
the projector that fixed cost was about half its time per event (batches of 3-4 events),
and for the transfer process manager, which skips nearly every event, it was nearly all
of it. Waiting a moment after a caught-up batch lets what comes meanwhile arrive together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from ledger.eventstore.port import SubscriptionBatch

LIVE_PACE = 0.01
"""Seconds a reader waits after a caught-up batch before it asks for the next one.

The first event after a quiet spell is still handed out at once, and a backlog is never
waited on (its batches are not caught up); while events keep coming, those of the next
`LIVE_PACE` seconds come together. A read-your-writes read or a transfer's next step
waits at most this much longer, and only under load."""


async def paced(
    batches: AsyncIterator[SubscriptionBatch], pace: float = LIVE_PACE
) -> AsyncIterator[SubscriptionBatch]:
    """`batches`, waiting `pace` seconds after each caught-up one before reading on (0:
    never). Closed, it closes `batches` there and then rather than leaving a store's
    connection to the garbage collector."""
    try:
        async for batch in batches:
            yield batch
            if pace and batch.caught_up:
                await asyncio.sleep(pace)
    finally:
        if isinstance(batches, AsyncGenerator):
            await batches.aclose()
