"""Wires the banking context's query side onto the generic server bootstrap."""

from __future__ import annotations

import asyncio

from ledger.backends import view_store_from_env
from ledger.banking.views import projection
from ledger.consistency import CheckpointFollower
from ledger.generations import GENERATIONS, ActiveGenerationFollower, GenerationViews
from ledger.grpc.server import Service, open_with_retry, serve
from ledger.settings import Env, bind_host, env_float, port, shutdown_grace
from ledger.v1 import account_query_service_pb2, account_query_service_pb2_grpc
from query_server.servicer import AccountQueryServicer

DESCRIPTOR = account_query_service_pb2.DESCRIPTOR.services_by_name["AccountQueryService"]


async def run(env: Env) -> int:
    store = view_store_from_env(env)
    listen_port = port(env, "LEDGER_QUERY_PORT", 50052)
    host, grace = bind_host(env), shutdown_grace(env)
    max_wait = env_float(env, "LEDGER_MAX_WAIT_SECONDS", 5.0, minimum=0.0, maximum=300.0)
    # Reads go to the active generation of the views, which a rebuild switches.
    views = GenerationViews(store, projection.first_generation)
    active = ActiveGenerationFollower(
        views, projection.name, projection.version, projection.collections
    )
    follower = CheckpointFollower(
        lambda: store.checkpoint(views.generation.name),
        changes=store.change_watcher,
    )
    servicer = AccountQueryServicer(
        views,
        follower,
        max_wait=max_wait,
        checkpoint_name=lambda: views.generation.name,
        views_version=lambda: views.generation.version,
    )

    async def open_views() -> None:
        await store.open([GENERATIONS])
        try:
            await active.start()
        except BaseException:
            await store.close()  # the retry opens it afresh
            raise

    async def start(stop: asyncio.Event) -> bool:
        return await open_with_retry("view store", open_views, stop)

    return await serve(
        name="query_server",
        host=host,
        port=listen_port,
        services=[
            Service.of(
                servicer,
                account_query_service_pb2_grpc.add_AccountQueryServiceServicer_to_server,
                DESCRIPTOR,
            )
        ],
        start=start,
        stop=store.close,
        grace=grace,
        stopping=servicer.close_watches,
        background=[active.run],
    )
