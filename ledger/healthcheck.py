"""`python -m ledger.healthcheck`: a container health probe for the three processes.

Exit status 0 means healthy and 1 means anything else, as Docker's HEALTHCHECK expects
(it reserves 2, so a usage error also exits 1). One line on stdout says why; Docker keeps
it in `docker inspect --format '{{json .State.Health}}' CONTAINER`.

    python -m ledger.healthcheck --port 50051 [--service ledger.v1.AccountCommandService]
        asks the gRPC health service (grpc.health.v1.Health/Check) of a server; healthy
        only when the answer is SERVING. Nothing listening fails at once, a server that
        does not answer fails after --timeout seconds.
    python -m ledger.healthcheck --projector [--max-age 30]
        the projector has no gRPC port: it rewrites a heartbeat file in LEDGER_DATA_DIR
        every few seconds while its projection runs (see `keep_heartbeat`), and removes
        it when it stops; healthy only while that file is fresh.
    python -m ledger.healthcheck
        (the image's HEALTHCHECK) finds the Ledger processes running in this container
        from /proc and checks each of them as above, with ports from the same
        environment variables the processes read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ledger.settings import Env, SettingsError, current, env_str, port

log = logging.getLogger("ledger.projector")

HEALTHY, UNHEALTHY = 0, 1
HEARTBEAT_FILE = "projector.heartbeat"
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_MAX_AGE = 30.0
DEFAULT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Role:
    """A Ledger process as it shows in a command line, and how to check it."""

    name: str
    console_script: str
    module: str
    port_variable: str | None  # None: the heartbeat file instead of a gRPC port
    default_port: int = 0


ROLES = (
    Role("command server", "ledger-command-server", "command_server", "LEDGER_COMMAND_PORT", 50051),
    Role("projector", "ledger-projector", "projector", None),
    Role("query server", "ledger-query-server", "query_server", "LEDGER_QUERY_PORT", 50052),
)


def heartbeat_path(env: Env) -> Path:
    """Where the projector keeps its heartbeat: LEDGER_DATA_DIR (without creating it)."""
    return Path(env_str(env, "LEDGER_DATA_DIR", "./ledger-data")).expanduser() / HEARTBEAT_FILE


def _beat(path: Path, status: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(status + "\n", encoding="utf-8")
    partial.replace(path)  # the probe never reads half a file


def _stop_beating(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


async def keep_heartbeat(
    path: Path,
    status: Callable[[], str] = lambda: "running",
    *,
    interval: float = HEARTBEAT_INTERVAL,
) -> None:
    """Rewrite `path` with `status()` every `interval` seconds until cancelled, then remove it.

    The writes are synchronous on purpose: a few microseconds, and a cancellation can never
    land between a write and the removal, so a stopped projector leaves no fresh heartbeat.
    A heartbeat that cannot be written is logged, not raised: the projection goes on, and
    the health check reports the problem.
    """
    failing = False
    try:
        while True:
            try:
                _beat(path, status())
                failing = False
            except OSError as exc:
                if not failing:
                    log.warning(
                        "cannot write heartbeat", extra={"path": str(path), "error": str(exc)}
                    )
                failing = True
            await asyncio.sleep(interval)
    finally:
        _stop_beating(path)


@contextlib.asynccontextmanager
async def heartbeat(
    path: Path,
    status: Callable[[], str] = lambda: "running",
    *,
    interval: float = HEARTBEAT_INTERVAL,
) -> AsyncIterator[None]:
    """`keep_heartbeat` for the duration of an `async with` block."""
    task = asyncio.create_task(keep_heartbeat(path, status, interval=interval), name="heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def check_heartbeat(path: Path, max_age: float, *, now: float | None = None) -> tuple[int, str]:
    try:
        modified = path.stat().st_mtime
        status = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return UNHEALTHY, f"no projector heartbeat at {path}: the projection is not running"
    except OSError as exc:
        return UNHEALTHY, f"cannot read projector heartbeat {path}: {exc}"
    age = (time.time() if now is None else now) - modified
    if age > max_age:
        return UNHEALTHY, f"projector heartbeat is {age:.1f}s old (max {max_age:g}s): {status}"
    return HEALTHY, f"projector heartbeat {max(age, 0.0):.1f}s old: {status}"


def connect_host(env: Env) -> str:
    """The address that reaches a server bound to LEDGER_BIND_HOST from inside its host."""
    host = env_str(env, "LEDGER_BIND_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "*"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def check_grpc(host: str, port_: int, service: str, timeout: float) -> tuple[int, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"{host}:{port_}"
    label = f"{target} {service or '(server)'}"
    # No retries and no wait-for-ready: a refused connection fails the call at once.
    with grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            name = code.name if code is not None else "ERROR"
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return UNHEALTHY, f"{label}: {name}" + (f": {details}" if details else "")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return (HEALTHY if status == "SERVING" else UNHEALTHY), f"{label}: {status}"


def role_of(argv: Sequence[str]) -> Role | None:
    """The Ledger process a command line runs, if any.

    Matches `ledger-query-server` (the console script, run directly or as
    `python /venv/bin/ledger-query-server`) and `python -m query_server`.
    """
    for role in ROLES:
        if any(Path(arg).name == role.console_script for arg in argv[:2]):
            return role
        for flag, value in itertools.pairwise(argv):
            if flag == "-m" and value == role.module:
                return role
    return None


def running_roles(proc: Path = Path("/proc")) -> list[Role]:
    """The Ledger processes running on this machine (in a container: in this container)."""
    found: set[Role] = set()
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        role = role_of([arg.decode(errors="replace") for arg in raw.split(b"\0") if arg])
        if role is not None:
            found.add(role)
    return [role for role in ROLES if role in found]


def check_role(role: Role, env: Env, args: argparse.Namespace) -> tuple[int, str]:
    if role.port_variable is None:
        return check_heartbeat(args.heartbeat or heartbeat_path(env), args.max_age)
    listen_port = port(env, role.port_variable, role.default_port)
    return check_grpc(args.host or connect_host(env), listen_port, args.service, args.timeout)


def check_running(env: Env, args: argparse.Namespace, roles: Iterable[Role]) -> tuple[int, str]:
    results = [(role, *check_role(role, env, args)) for role in roles]
    if not results:
        names = ", ".join(role.console_script for role in ROLES)
        return UNHEALTHY, f"no Ledger process ({names}) is running here"
    worst = max(code for _, code, _ in results)
    return worst, "; ".join(f"{role.name}: {message}" for role, _, message in results)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ledger.healthcheck",
        description="Exit 0 when the Ledger process is healthy, 1 otherwise.",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--port", type=int, help="gRPC port to ask grpc.health.v1.Health/Check")
    what.add_argument(
        "--projector", action="store_true", help="check the projector's heartbeat file"
    )
    parser.add_argument(
        "--service", default="", help="service name to check (default: the whole server)"
    )
    parser.add_argument(
        "--host", help="server address (default: from LEDGER_BIND_HOST, 0.0.0.0 -> 127.0.0.1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for an answer"
    )
    parser.add_argument(
        "--heartbeat",
        type=Path,
        help=f"heartbeat file (default: $LEDGER_DATA_DIR/{HEARTBEAT_FILE})",
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=HEARTBEAT_MAX_AGE,
        help="oldest heartbeat, in seconds, that counts as healthy",
    )
    return parser


def run(argv: Sequence[str], env: Env, *, proc: Path = Path("/proc")) -> tuple[int, str]:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help exits 0, a usage error 2 (reserved by Docker)
        return (HEALTHY if exc.code in (0, None) else UNHEALTHY), ""
    try:
        if args.projector:
            return check_heartbeat(args.heartbeat or heartbeat_path(env), args.max_age)
        if args.port is not None:
            return check_grpc(args.host or connect_host(env), args.port, args.service, args.timeout)
        return check_running(env, args, running_roles(proc))
    except SettingsError as exc:
        return UNHEALTHY, f"configuration error: {exc}"


def main() -> None:
    code, message = run(sys.argv[1:], current())
    if message:
        print(message, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
