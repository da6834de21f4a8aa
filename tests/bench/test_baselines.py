"""The bench's page floor answers the page Ledger answers: a floor doing other, cheaper
work would make the ratio against it meaningless. It repeats the SQL of Ledger's view
store by hand, so this is what notices when the views' layout moves away from it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import inproc
from bench.__main__ import Ceiling, same_page, wait_projected
from bench.loadgen import TRANSACTIONS_PAGE
from tests.support.processes import Stack

pytestmark = pytest.mark.e2e


def test_the_page_floor_answers_ledgers_page_and_the_canned_ceiling_does_not(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path / "stack")
    accounts = ["hist-00000", "hist-00001"]
    head = asyncio.run(inproc.build_streams(stack.data_dir, accounts, 1 + TRANSACTIONS_PAGE + 2))
    stack.start()
    try:
        wait_projected(stack.query_target, accounts[-1], head)
        floor = Ceiling("--pages", str(stack.data_dir / "views.sqlite3"))
        ceiling = Ceiling()
        try:
            for account in accounts:
                same_page(floor.target, stack.query_target, account)
            with pytest.raises(RuntimeError, match="another page"):
                same_page(ceiling.target, stack.query_target, accounts[0])
        finally:
            for server in (floor, ceiling):
                server.close()
    finally:
        stack.close()
