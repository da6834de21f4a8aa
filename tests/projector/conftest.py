from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger.banking.views import projection
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.views.sqlite import SqliteViewStore
from tests.projector import Stores


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    """The file names the processes use under LEDGER_DATA_DIR, so the CLI sees them too."""
    events = SqliteEventStore(tmp_path / "events.sqlite3")
    views = SqliteViewStore(tmp_path / "views.sqlite3")
    await events.open()
    await views.open(projection.collections)
    try:
        yield Stores(events, views, tmp_path)
    finally:
        await events.close()
        await views.close()
