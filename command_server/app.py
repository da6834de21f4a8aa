"""Wires the banking context's command side onto the generic server bootstrap.

The transfer process manager runs here too unless LEDGER_TRANSFER_PROCESSOR=off (for
a deployment that runs it elsewhere): it starts once the event store is open, shares
the account command handler (its cache and per-account ordering) with the servicer,
and on SIGTERM stops after the in-flight RPCs, saving its checkpoint, before the
event store closes.
"""

from __future__ import annotations

import asyncio

from command_server.servicer import AccountCommandServicer
from ledger.application.command_handler import CommandHandler
from ledger.backends import event_store_from_env
from ledger.banking.transfer_saga import transfer_process_manager
from ledger.banking.views import codec
from ledger.domain import accounts
from ledger.eventstore.state_codec import JsonStateCodec
from ledger.grpc.server import Service, open_with_retry, serve
from ledger.settings import Env, bind_host, env_choice, port, shutdown_grace
from ledger.v1 import account_command_service_pb2, account_command_service_pb2_grpc

DESCRIPTOR = account_command_service_pb2.DESCRIPTOR.services_by_name["AccountCommandService"]


def transfer_processor_enabled(env: Env) -> bool:
    return env_choice(env, "LEDGER_TRANSFER_PROCESSOR", "on", ("on", "off")) == "on"


async def run(env: Env) -> int:
    events = event_store_from_env(env)
    listen_port = port(env, "LEDGER_COMMAND_PORT", 50051)
    host, grace = bind_host(env), shutdown_grace(env)
    handler = CommandHandler(
        events, accounts.accounts, codec, snapshots=JsonStateCodec(accounts.Account)
    )
    servicer = AccountCommandServicer(handler)
    process_manager = transfer_process_manager(handler) if transfer_processor_enabled(env) else None

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
        background=[process_manager.run] if process_manager is not None else [],
    )
