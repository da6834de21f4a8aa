"""The gRPC ceiling: a bare grpc.aio server answering Ledger's message types with canned
responses, doing no work. `python -m bench.ceiling PORT`.

`python -m bench.ceiling PORT --append DIR`: the append floor, the same server whose
DepositFunds appends one event per call to a SqliteEventStore in DIR (durable and
group-committed, as Ledger's) and answers with its version and position: the least a
server must do to acknowledge a durable deposit, without Ledger's domain (validation,
idempotency, the account's state) and without a projector keeping views.

`python -m bench.ceiling PORT --pages FILE`: the page floor, the same server whose
ListTransactions reads its page from Ledger's views file FILE: the SQL Ledger's view
store runs (the renderings of the account's key range), the rows' encoded `Transaction`s
framed and parsed into the answer, and the next page's token. The least a server must
do to answer a page from those views, without Ledger's layers (validation, min_position,
the views' generation and layout, the paging module, error mapping).

All run on the event loop Ledger's processes run on (uvloop, `ledger.process`): a
ceiling on a slower loop than Ledger's would flatter every ratio to it."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import uuid
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench.loadgen import TRANSACTIONS_PAGE
from ledger.eventstore.port import ANY_VERSION, NewEvent
from ledger.eventstore.sqlite import SqliteEventStore
from ledger.grpc.types import Context
from ledger.grpc.wire import repeated_field
from ledger.paging import encode_token
from ledger.process import use_uvloop
from ledger.v1 import (
    account_command_service_pb2 as cmd_pb,
)
from ledger.v1 import (
    account_command_service_pb2_grpc as cmd_grpc,
)
from ledger.v1 import (
    account_pb2,
)
from ledger.v1 import (
    account_query_service_pb2 as query_pb,
)
from ledger.v1 import (
    account_query_service_pb2_grpc as query_grpc,
)
from query_server.servicer import TRANSACTIONS_FIELD

SCOPE = "0123456789ab"
"""A page token's query digest, as long as Ledger's (`ledger.paging`)."""

# As large as Ledger's answers under the load (ids, positions and balances of the same
# magnitudes, both timestamps set): the same bytes to encode and send.
DEPOSIT = cmd_pb.DepositFundsResponse(
    account_id="acct-04242", version=3, position=123_456, balance_minor=4_242
)
ACCOUNT = query_pb.GetAccountResponse(
    account=account_pb2.Account(
        account_id="acct-04242",
        owner_name="Owner acct-04242",
        currency="EUR",
        balance_minor=4_242,
        status=account_pb2.ACCOUNT_STATUS_OPEN,
        version=3,
        position=123_456,
        opened_at=Timestamp(seconds=1_764_800_000, nanos=123_456_000),
        updated_at=Timestamp(seconds=1_764_800_100, nanos=654_321_000),
    )
)

# A first page of an account's deposits, with the token for the next: ids, amounts,
# balances and positions of the magnitudes Ledger answers (`bench.__main__`'s history
# accounts); the bench prints both sides' answer sizes.
TRANSACTIONS = query_pb.ListTransactionsResponse(
    transactions=[
        account_pb2.Transaction(
            transaction_id=str(uuid.UUID(int=2**127 + version)),
            account_id="hist-00042",
            kind=account_pb2.TRANSACTION_KIND_DEPOSIT,
            amount_minor=10,
            balance_after_minor=10 * version,
            description="bench",
            occurred_at=Timestamp(seconds=1_764_800_000 + version, nanos=654_321_000),
            version=version,
            position=23_456 + version,
        )
        for version in range(1, TRANSACTIONS_PAGE + 1)
    ],
    next_page_token=encode_token(f"hist-00042/{TRANSACTIONS_PAGE:020d}", SCOPE),
)


class Commands(cmd_grpc.AccountCommandServiceServicer):
    """Only the methods the load calls; the rest answer UNIMPLEMENTED, as generated
    (so mypy counts these classes abstract: they are instantiated knowingly)."""

    async def DepositFunds(
        self, request: cmd_pb.DepositFundsRequest, context: Context
    ) -> cmd_pb.DepositFundsResponse:
        return DEPOSIT


class AppendingCommands(cmd_grpc.AccountCommandServiceServicer):
    def __init__(self, store: SqliteEventStore) -> None:
        self._store = store

    async def DepositFunds(
        self, request: cmd_pb.DepositFundsRequest, context: Context
    ) -> cmd_pb.DepositFundsResponse:
        event = NewEvent(uuid.uuid4(), "V1.FundsDeposited", request.SerializeToString(), b"{}")
        result = await self._store.append(f"account-{request.account_id}", [event], ANY_VERSION)
        return cmd_pb.DepositFundsResponse(
            account_id=request.account_id,
            version=result.version,
            position=result.position,
            balance_minor=request.amount_minor,
        )


class Queries(query_grpc.AccountQueryServiceServicer):
    async def GetAccount(
        self, request: query_pb.GetAccountRequest, context: Context
    ) -> query_pb.GetAccountResponse:
        return ACCOUNT

    async def ListTransactions(
        self, request: query_pb.ListTransactionsRequest, context: Context
    ) -> query_pb.ListTransactionsResponse:
        return TRANSACTIONS


PAGE_SQL = (
    "SELECT key, rendered FROM view_account_history WHERE key >= ? AND key < ?"
    " AND rendered IS NOT NULL ORDER BY key LIMIT ?"
)
"""What Ledger's view store runs for a first page of ListTransactions (its first
generation of views: the bench's stack never rebuilds)."""


class PageQueries(Queries):
    """Reads on the event loop's thread, as Ledger's query server reads a page."""

    def __init__(self, views: Path) -> None:
        self._db = sqlite3.connect(views, isolation_level=None)

    async def ListTransactions(
        self, request: query_pb.ListTransactionsRequest, context: Context
    ) -> query_pb.ListTransactionsResponse:
        size, account_id = request.page_size, request.account_id
        bounds = (account_id + "/", account_id + "0")
        found = self._db.execute(PAGE_SQL, (*bounds, size + 1)).fetchall()
        page = repeated_field(TRANSACTIONS_FIELD, [rendered for _, rendered in found[:size]])
        answer = query_pb.ListTransactionsResponse.FromString(page)
        if len(found) > size:
            answer.next_page_token = encode_token(found[size - 1][0], SCOPE)
        return answer


async def serve(port: int, append_dir: Path | None = None, queries: Queries | None = None) -> None:
    store = None if append_dir is None else SqliteEventStore(append_dir / "events.sqlite3")
    if store is not None:
        await store.open()
    server = grpc.aio.server()
    commands = Commands() if store is None else AppendingCommands(store)  # type: ignore[abstract]
    cmd_grpc.add_AccountCommandServiceServicer_to_server(commands, server)
    servicer = Queries() if queries is None else queries  # type: ignore[abstract]
    query_grpc.add_AccountQueryServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)
    if store is not None:
        await store.close()


if __name__ == "__main__":
    mode, path = (sys.argv[2], Path(sys.argv[3])) if len(sys.argv) > 3 else ("", None)
    append = path if mode == "--append" else None
    pages = path if mode == "--pages" else None
    queries = None if pages is None else PageQueries(pages)  # type: ignore[abstract]
    use_uvloop()  # the event loop Ledger's servers run on: without it, 5-10 % slower
    asyncio.run(serve(int(sys.argv[1]), append, queries))
