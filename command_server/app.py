"""Wires the banking context's command side onto the generic server bootstrap."""

from __future__ import annotations

import asyncio

from command_server.servicer import AccountCommandServicer
from ledger.application.command_handler import CommandHandler
from ledger.backends import event_store_from_env
from ledger.banking.views import codec
from ledger.domain import accounts
from ledger.grpc.server import Service, open_with_retry, serve
from ledger.settings import Env, bind_host, port, shutdown_grace
from ledger.v1 import account_command_service_pb2, account_command_service_pb2_grpc

DESCRIPTOR = account_command_service_pb2.DESCRIPTOR.services_by_name["AccountCommandService"]


async def run(env: Env) -> int:
    events = event_store_from_env(env)
    listen_port = port(env, "LEDGER_COMMAND_PORT", 50051)
    host, grace = bind_host(env), shutdown_grace(env)
    servicer = AccountCommandServicer(CommandHandler(events, accounts.accounts, codec))

    async def start(stop: asyncio.Event) -> bool:
        return await open_with_retry("event store", events.open, stop)

    return await serve(
        name="command_server",
        host=host,
        port=listen_port,
        services=[
            Service.of(
                servicer,
                account_command_service_pb2_grpc.add_AccountCommandServiceServicer_to_server,
                DESCRIPTOR,
            )
        ],
        start=start,
        stop=events.close,
        grace=grace,
    )
