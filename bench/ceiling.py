"""The gRPC ceiling: a bare grpc.aio server answering Ledger's message types with canned
responses, doing no work. `python -m bench.ceiling PORT`."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

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

DEPOSIT = cmd_pb.DepositFundsResponse(account_id="acc", version=7, position=42, balance_minor=700)
ACCOUNT = query_pb.GetAccountResponse(
    account=account_pb2.Account(
        account_id="acc",
        owner_name="Bench Owner",
        currency="EUR",
        balance_minor=700,
        status=account_pb2.ACCOUNT_STATUS_OPEN,
        version=7,
    )
)


class Commands(cmd_grpc.AccountCommandServiceServicer):
    async def DepositFunds(self, request, context):  # type: ignore[no-untyped-def]
        return DEPOSIT


class Queries(query_grpc.AccountQueryServiceServicer):
    async def GetAccount(self, request, context):  # type: ignore[no-untyped-def]
        return ACCOUNT


async def serve(port: int) -> None:
    server = grpc.aio.server()
    cmd_grpc.add_AccountCommandServiceServicer_to_server(Commands(), server)
    query_grpc.add_AccountQueryServiceServicer_to_server(Queries(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
