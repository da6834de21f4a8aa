"""Starts a gRPC server the same way for every process and context.

Health reports NOT_SERVING until the stores are open, then SERVING; reflection lists
every service; SIGTERM or SIGINT flips health to NOT_SERVING, lets in-flight calls
finish within the grace period, closes the stores, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger.backoff import Backoff
from ledger.errors import Unavailable
from ledger.grpc.errors import with_error_mapping

log = logging.getLogger("ledger.server")
Servicer = TypeVar("Servicer", bound=Any)


@dataclass(frozen=True)
class Service:
    name: str
    register: Callable[[grpc.aio.Server], None]

    @classmethod
    def of(
        cls,
        servicer: Servicer,
        add_to_server: Callable[[Servicer, grpc.aio.Server], None],
        descriptor: ServiceDescriptor,
    ) -> Service:
        """From generated code: the servicer, its add_*_to_server, its descriptor; its
        errors leave as the statuses ledger.grpc.errors maps them to."""
        mapped = with_error_mapping(servicer, descriptor)
        return cls(descriptor.full_name, lambda server: add_to_server(mapped, server))


def stop_event_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def open_with_retry(
    what: str, open_: Callable[[], Awaitable[None]], stop: asyncio.Event, *, max_delay: float = 10.0
) -> bool:
    """Open a store, retrying with backoff while it is unavailable; False if stopped first."""
    backoff = Backoff(cap=max_delay)
    while not stop.is_set():
        try:
            await open_()
            return True
        except Unavailable as exc:
            log.warning(
                f"{what} unavailable, retrying in {backoff.delay:.1f}s",
                extra={"error": exc.message},
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff.take())
    return False


async def serve(
    *,
    name: str,
    host: str,
    port: int,
    services: Sequence[Service],
    start: Callable[[asyncio.Event], Awaitable[bool]],
    stop: Callable[[], Awaitable[None]],
    grace: float,
    stopping: Callable[[], Awaitable[None]] | None = None,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> int:
    """Run until SIGTERM/SIGINT. `start` opens the stores (False: stopped before ready);
    `stopping` runs as shutdown begins, before the grace period (to end live streams,
    which would otherwise hold the server for the whole grace period); `background`
    jobs run from `start` until after the grace period, then are cancelled before `stop`."""
    # No SO_REUSEPORT: a second server on a taken port must fail, not share the traffic.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in services:
        service.register(server)
    names = [s.name for s in services]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )

    async def set_health(status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for service_name in ["", *names]:
            await health_servicer.set(service_name, status)

    await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        log.error("cannot bind", extra={"address": f"{host}:{port}", "error": str(exc)})
        return 1
    signalled = stop_event_on_signals()
    await server.start()
    log.info(f"{name} listening", extra={"address": f"{host}:{bound}", "services": ",".join(names)})
    jobs: list[asyncio.Task[None]] = []
    try:
        if await start(signalled):
            jobs = [asyncio.create_task(job()) for job in background]
            await set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info(f"{name} serving", extra={"address": f"{host}:{bound}"})
            await signalled.wait()
    finally:
        log.info(f"{name} stopping", extra={"grace_seconds": grace})
        await set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if stopping is not None:
            await stopping()
        await server.stop(grace)
        for job in jobs:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
        await stop()
        log.info(f"{name} stopped")
    return 0
