"""`python -m bench.prerendered [--quick]`: what pre-rendered transactions would buy (e)
`ListTransactions`. An experiment beside the suite, not one of its scenarios.

The page floor (`python -m bench.ceiling PORT --pages FILE`) shows that no server reading
a page from the views as they are laid out reaches (e)'s target: it runs the key-range
read, a JSON filter on every row, a JSON decode per row and the message built field by
field. Here the same views are copied, and each transaction row of the copy also gets
its `Transaction` message, encoded once (`rendered`, as a `ListTransactionsResponse`
holding that one row: such encodings joined are the encoding of the page). The
pre-rendered floor (`--prerendered`) then answers a page with one key-range read and one
parse in C. The ceiling, both floors and Ledger's own query server take turns under the
same load, as in the suite, and the ratios to the ceiling are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import tempfile
from pathlib import Path

import orjson

from bench import inproc
from bench.__main__ import (
    FULL,
    HISTORY_ACCOUNTS,
    HISTORY_DEPOSITS,
    QUICK,
    Ceiling,
    Side,
    in_turns,
    load,
    log,
    ratio,
    same_page,
    wait_projected,
)
from bench.loadgen import LIST_TRANSACTIONS, TRANSACTIONS_PAGE, LoadResult
from ledger.v1 import account_query_service_pb2 as query_pb
from query_server.servicer import transaction_message
from tests.support.processes import QUERY_SERVER, Stack


def prerender(views: Path, copy: Path) -> int:
    """`views` copied to `copy` (SQLite's backup: consistent, WAL included), with each
    transaction row's encoding in a new `rendered` column; the number of rows rendered."""
    with (
        contextlib.closing(sqlite3.connect(views)) as source,
        contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as target,
    ):
        source.backup(target)
        target.execute("ALTER TABLE view_account_history ADD COLUMN rendered BLOB")
        rendered = [
            (_rendered(orjson.loads(raw)), key)
            for key, raw in target.execute("SELECT key, doc FROM view_account_history")
        ]
        target.execute("BEGIN")
        target.executemany(
            "UPDATE view_account_history SET rendered = ? WHERE key = ?",
            [(r, key) for r, key in rendered if r is not None],
        )
        target.execute("COMMIT")
        return sum(r is not None for r, _ in rendered)


def _rendered(doc: dict[str, object]) -> bytes | None:
    if doc.get("transaction") is not True:
        return None
    row = transaction_message(doc)
    return query_pb.ListTransactionsResponse(transactions=[row]).SerializeToString()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows")
    profile = QUICK if parser.parse_args().quick else FULL
    with tempfile.TemporaryDirectory(prefix="ledger-prerendered-") as tmp:
        work = Path(tmp)
        histories = [f"hist-{i:05d}" for i in range(HISTORY_ACCOUNTS)]
        log(f"writing {len(histories)} accounts with {HISTORY_DEPOSITS} deposits each")
        data = work / "data"
        head = asyncio.run(inproc.build_streams(data, histories, 1 + HISTORY_DEPOSITS))
        with contextlib.ExitStack() as running:
            stack = Stack(work)
            stack.start()
            running.callback(stack.close)
            query = stack.query_target
            wait_projected(query, histories[-1], head)
            views, copy = data / "views.sqlite3", work / "prerendered.sqlite3"
            rows = prerender(views, copy)
            log(f"rendered {rows} transaction rows into a copy of the views")
            ceiling = Ceiling()
            running.callback(ceiling.close)
            floor = Ceiling("--pages", str(views))
            running.callback(floor.close)
            pre = Ceiling("--prerendered", str(copy))
            running.callback(pre.close)
            for server in (floor, pre):
                same_page(server.target, query, histories[0])
            ledger_pid = stack[QUERY_SERVER].proc.pid  # type: ignore[union-attr]

            def side(target: str, name: str, pid: int) -> Side:
                watch = ((name, pid),)
                return lambda window, label: load(
                    window, LIST_TRANSACTIONS, label, target, target, histories, watch
                )

            results = in_turns(
                profile,
                {
                    "ceiling": side(ceiling.target, "ceiling", ceiling.proc.pid),
                    "page floor": side(floor.target, "page_floor", floor.proc.pid),
                    "pre-rendered floor": side(pre.target, "prerendered", pre.proc.pid),
                    "Ledger (e)": side(query, "query_server", ledger_pid),
                },
            )
    report(results)
    return 0


def report(results: dict[str, LoadResult]) -> None:
    base = results["ceiling"]
    title = f"ListTransactions, a page of {TRANSACTIONS_PAGE}"
    print(f"{title:<32} {'per s':>7} {'ratio':>6}  turns")
    for name, result in results.items():
        turns = [ratio(a, b) for a, b in zip(result.windows_per_s, base.windows_per_s, strict=True)]
        print(
            f"{name:<32} {result.throughput:7.0f} {ratio(result.throughput, base.throughput):6.3f}"
            f"  {min(turns):.2f}-{max(turns):.2f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
