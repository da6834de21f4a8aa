from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger.eventstore.sqlite import SqliteEventStore


async def store_on(path: Path) -> AsyncIterator[SqliteEventStore]:
    store = SqliteEventStore(path)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite3"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SqliteEventStore]:
    async for opened in store_on(path):
        yield opened


@pytest.fixture
async def second_store(path: Path) -> AsyncIterator[SqliteEventStore]:
    """Another store on the same file: what a second command server process would have."""
    async for opened in store_on(path):
        yield opened
