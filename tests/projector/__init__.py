"""The projector's status and parked events, on real SQLite stores (and processes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from ledger.banking.views import codec
from ledger.domain.accounts import AccountOpened, FundsDeposited
from ledger.eventstore.codec import EventMetadata
from ledger.eventstore.port import ANY_VERSION, AppendResult, NewEvent
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.views.port import Checkpoint, Upsert
from ledger.views.sqlite import SqliteViewStore
from tests.support.views import WrappedViews

GUARD = 30.0
"""Guards against hangs only: every wait below ends as soon as its condition holds."""
T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], holds: Callable[[T], bool], what: str) -> T:
    """The first value of `probe()` for which `holds` is true (fails after GUARD)."""
    last: T | None = None
    try:
        async with asyncio.timeout(GUARD):
            while True:
                last = await probe()
                if holds(last):
                    return last
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never {what}; last seen: {last!r}") from None


async def append_account_events(
    events: SqliteEventStore, account_id: str, deposits: Sequence[int]
) -> AppendResult:
    """Opens the account and makes the deposits, as the command server would record them."""
    now = datetime.now(UTC)
    domain: list[object] = [AccountOpened(account_id, "Ada", "EUR", now)]
    balance = 0
    for amount in deposits:
        balance += amount
        domain.append(FundsDeposited(account_id, amount, "EUR", "pay", balance, now))
    stream = f"account-{account_id}"
    new = codec.new_events(stream, domain, EventMetadata(request_id=uuid.uuid4().hex))
    return await events.append(stream, new, ANY_VERSION)


async def append_malformed_deposit(events: SqliteEventStore, account_id: str) -> AppendResult:
    """Another producer writes a deposit whose body is not even JSON into the stream."""
    bad = NewEvent(
        uuid.uuid4(), codec.type_name_of_class(FundsDeposited), b'{"account_id": "', b"{}"
    )
    return await events.append(f"account-{account_id}", [bad], ANY_VERSION)


@dataclass
class Stores:
    events: SqliteEventStore
    views: SqliteViewStore
    data_dir: Path


class GatedViews(WrappedViews):
    """The real view store, but `apply` waits for `gate` (and can be made to fail)."""

    def __init__(self, inner: SqliteViewStore) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.gate.set()
        self.failure: Exception | None = None
        self.waiting = asyncio.Event()

    async def apply(self, upserts: Sequence[Upsert], checkpoint: Checkpoint) -> None:
        self.waiting.set()
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        await self.inner.apply(upserts, checkpoint)
