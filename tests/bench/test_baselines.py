"""The bench's page floor answers the page Ledger answers: a floor doing other, cheaper
work would make the ratio against it meaningless. It repeats the SQL of Ledger's view
store by hand, so this is what notices when the views' layout moves away from it. The
pre-rendered experiment (bench.prerendered) must answer the same page too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import inproc
from bench.__main__ import Ceiling, same_page, wait_projected
from bench.loadgen import TRANSACTIONS_PAGE
from bench.prerendered import prerender
from tests.support.processes import Stack

pytestmark = pytest.mark.e2e


def test_both_page_floors_answer_ledgers_page_and_the_canned_ceiling_does_not(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path / "stack")
    accounts = ["hist-00000", "hist-00001"]
    head = asyncio.run(inproc.build_streams(stack.data_dir, accounts, 1 + TRANSACTIONS_PAGE + 2))
    stack.start()
    try:
        wait_projected(stack.query_target, accounts[-1], head)
        views = stack.data_dir / "views.sqlite3"
        copy = tmp_path / "prerendered.sqlite3"
        assert prerender(views, copy) == len(accounts) * (TRANSACTIONS_PAGE + 2)
        floors = [Ceiling("--pages", str(views)), Ceiling("--prerendered", str(copy))]
        ceiling = Ceiling()
        try:
            for floor in floors:
                for account in accounts:
                    same_page(floor.target, stack.query_target, account)
            with pytest.raises(RuntimeError, match="another page"):
                same_page(ceiling.target, stack.query_target, accounts[0])
        finally:
            for server in (*floors, ceiling):
                server.close()
    finally:
        stack.close()
