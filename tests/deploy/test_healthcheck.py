"""`python -m ledger.healthcheck`, run as Docker runs it: a subprocess whose exit status
is the verdict, against a real grpc.aio server with the standard health servicer."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ledger import healthcheck
from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "ledger.v1.AccountCommandService"
# Guards against a hung probe, not a performance assertion.
PROBE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Probe:
    code: int
    output: str
    seconds: float


async def probe(*args: str, env: Mapping[str, str] | None = None) -> Probe:
    """Run the probe the way a HEALTHCHECK does, while this event loop keeps serving."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    child_env.update(env or {})
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ledger.healthcheck",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=child_env,
        cwd=REPO_ROOT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Probe(proc.returncode, out.decode(), time.monotonic() - started)


@dataclass
class HealthServer:
    port: int
    servicer: health.aio.HealthServicer

    async def set(self, service: str, status: int) -> None:
        await self.servicer.set(service, status)


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    srv = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield HealthServer(port, servicer)
    finally:
        await srv.stop(None)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


# -- gRPC servers -------------------------------------------------------------------


async def test_serving_server_is_healthy(server: HealthServer) -> None:
    await server.set("", SERVING)
    result = await probe("--port", str(server.port))
    assert result.code == 0, result.output
    assert "SERVING" in result.output


async def test_serving_service_is_healthy(server: HealthServer) -> None:
    await server.set(SERVICE, SERVING)
    result = await probe("--port", str(server.port), "--service", SERVICE)
    assert result.code == 0, result.output


async def test_not_serving_service_is_unhealthy(server: HealthServer) -> None:
    await server.set("", SERVING)
    await server.set(SERVICE, NOT_SERVING)
    result = await probe("--port", str(server.port), "--service", SERVICE)
    assert result.code == 1, result.output
    assert "NOT_SERVING" in result.output


async def test_server_going_not_serving_turns_unhealthy(server: HealthServer) -> None:
    """What a SIGTERM does to a Ledger server: the next probe already fails."""
    await server.set(SERVICE, SERVING)
    assert (await probe("--port", str(server.port), "--service", SERVICE)).code == 0
    await server.set(SERVICE, NOT_SERVING)
    assert (await probe("--port", str(server.port), "--service", SERVICE)).code == 1


async def test_unknown_service_is_unhealthy(server: HealthServer) -> None:
    await server.set("", SERVING)
    result = await probe("--port", str(server.port), "--service", "no.such.Service")
    assert result.code == 1, result.output
    assert "NOT_FOUND" in result.output


async def test_nothing_listening_fails_at_once() -> None:
    # a 30 s deadline the probe must not wait for: a refused connection is an answer
    result = await probe("--port", str(free_port()), "--timeout", "30")
    assert result.code == 1, result.output
    assert "UNAVAILABLE" in result.output
    assert result.seconds < 15, f"took {result.seconds:.1f}s: waited for the deadline"


async def test_server_that_never_answers_fails_after_the_timeout(silent_listener: int) -> None:
    result = await probe("--port", str(silent_listener), "--timeout", "1")
    assert result.code == 1, result.output
    assert "DEADLINE_EXCEEDED" in result.output


async def test_probe_finds_the_server_from_the_bind_host(server: HealthServer) -> None:
    await server.set("", SERVING)
    result = await probe("--port", str(server.port), env={"LEDGER_BIND_HOST": "0.0.0.0"})
    assert result.code == 0, result.output
    assert "127.0.0.1" in result.output


@pytest.mark.parametrize(
    "args",
    [("--bogus",), ("--port", "x"), ("--port", "1", "--projector")],
    ids=["unknown-flag", "bad-port", "port-and-projector"],
)
async def test_usage_error_exits_1_not_dockers_reserved_2(args: tuple[str, ...]) -> None:
    result = await probe(*args)
    assert result.code == 1, result.output
    assert "usage:" in result.output


async def test_help_exits_0() -> None:
    result = await probe("--help")
    assert result.code == 0, result.output
    assert "--projector" in result.output


# -- projector heartbeat ------------------------------------------------------------


async def test_fresh_heartbeat_is_healthy(tmp_path: Path) -> None:
    (tmp_path / healthcheck.HEARTBEAT_FILE).write_text("position=7 applied=7\n")
    result = await probe("--projector", env={"LEDGER_DATA_DIR": str(tmp_path)})
    assert result.code == 0, result.output
    assert "position=7" in result.output


async def test_stale_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    beat = tmp_path / healthcheck.HEARTBEAT_FILE
    beat.write_text("position=7\n")
    an_hour_ago = time.time() - 3600
    os.utime(beat, (an_hour_ago, an_hour_ago))
    result = await probe("--projector", env={"LEDGER_DATA_DIR": str(tmp_path)})
    assert result.code == 1, result.output
    assert "old" in result.output


async def test_max_age_is_honoured(tmp_path: Path) -> None:
    beat = tmp_path / "beat"
    beat.write_text("x\n")
    ten_seconds_ago = time.time() - 10
    os.utime(beat, (ten_seconds_ago, ten_seconds_ago))
    assert (await probe("--projector", "--heartbeat", str(beat), "--max-age", "60")).code == 0
    assert (await probe("--projector", "--heartbeat", str(beat), "--max-age", "5")).code == 1


async def test_missing_heartbeat_is_unhealthy(tmp_path: Path) -> None:
    result = await probe("--projector", env={"LEDGER_DATA_DIR": str(tmp_path)})
    assert result.code == 1, result.output
    assert "no projector heartbeat" in result.output


async def test_heartbeat_lives_while_the_block_runs_and_goes_with_it(tmp_path: Path) -> None:
    path = healthcheck.heartbeat_path({"LEDGER_DATA_DIR": str(tmp_path / "data")})
    position = 0

    def status() -> str:
        return f"position={position}"

    env = {"LEDGER_DATA_DIR": str(tmp_path / "data")}
    async with healthcheck.heartbeat(path, status, interval=0.05):
        await asyncio.sleep(0.2)
        assert path.read_text() == "position=0\n"
        position = 42
        await asyncio.sleep(0.2)
        result = await probe("--projector", "--max-age", "5", env=env)
        assert result.code == 0, result.output
        assert "position=42" in result.output
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir()] == []  # no partial files left
    assert (await probe("--projector", env=env)).code == 1


async def test_heartbeat_stops_when_cancelled_mid_sleep(tmp_path: Path) -> None:
    path = tmp_path / "beat"
    task = asyncio.create_task(healthcheck.keep_heartbeat(path, interval=3600))
    await asyncio.sleep(0.05)
    assert path.exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not path.exists()


async def test_unwritable_heartbeat_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = blocker / "projector.heartbeat"
    with caplog.at_level(logging.WARNING, logger="ledger.projector"):
        async with healthcheck.heartbeat(path, interval=0.02):
            await asyncio.sleep(0.1)  # several failed beats: one warning, no exception
    warnings = [r for r in caplog.records if r.getMessage() == "cannot write heartbeat"]
    assert len(warnings) == 1


# -- no arguments: the image's HEALTHCHECK finds the process itself -------------------


def fake_proc(root: Path, *commands: list[str]) -> Path:
    for pid, argv in enumerate(commands, start=100):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (root / "self").mkdir(exist_ok=True)  # non-numeric entries are skipped
    return root


VENV_QUERY_SERVER = ["/opt/venv/bin/python", "/opt/venv/bin/ledger-query-server"]
VENV_PROJECTOR = ["/opt/venv/bin/python", "/opt/venv/bin/ledger-projector"]


async def test_auto_mode_checks_the_server_it_finds(server: HealthServer, tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", ["tini", "--", "x"], VENV_QUERY_SERVER)
    env = {"LEDGER_QUERY_PORT": str(server.port), "LEDGER_BIND_HOST": "0.0.0.0"}
    await server.set("", SERVING)
    # the probe is blocking gRPC: run it off this loop, which serves the health service
    code, message = await asyncio.to_thread(healthcheck.run, [], env, proc=proc)
    assert code == 0, message
    assert message.startswith("query server:")
    await server.set("", NOT_SERVING)
    code, message = await asyncio.to_thread(healthcheck.run, [], env, proc=proc)
    assert code == 1, message


async def test_auto_mode_needs_every_process_it_finds_healthy(
    server: HealthServer, tmp_path: Path
) -> None:
    """A container running ledger-local: healthy only when all of its processes are."""
    proc = fake_proc(
        tmp_path / "proc",
        ["/opt/venv/bin/python", "/opt/venv/bin/ledger-local"],
        ["/opt/venv/bin/python", "-m", "command_server"],
        ["/opt/venv/bin/python", "-m", "projector"],
    )
    data = tmp_path / "data"
    env = {"LEDGER_COMMAND_PORT": str(server.port), "LEDGER_DATA_DIR": str(data)}
    await server.set("", SERVING)
    code, message = await asyncio.to_thread(healthcheck.run, [], env, proc=proc)
    assert code == 1, message  # no heartbeat yet
    assert "command server: " in message
    assert "no projector heartbeat" in message
    data.mkdir()
    (data / healthcheck.HEARTBEAT_FILE).write_text("position=1\n")
    code, message = await asyncio.to_thread(healthcheck.run, [], env, proc=proc)
    assert code == 0, message


def test_auto_mode_with_no_ledger_process_is_unhealthy(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", ["/usr/bin/sleep", "60"], ["python", "-m", "http.server"])
    code, message = healthcheck.run([], {}, proc=proc)
    assert code == 1
    assert "no Ledger process" in message


def test_auto_mode_reports_a_malformed_port_variable(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", VENV_QUERY_SERVER)
    code, message = healthcheck.run([], {"LEDGER_QUERY_PORT": "fifty"}, proc=proc)
    assert code == 1
    assert "LEDGER_QUERY_PORT" in message


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/opt/venv/bin/python", "/opt/venv/bin/ledger-command-server"], "command server"),
        (["/opt/venv/bin/ledger-query-server"], "query server"),
        (VENV_PROJECTOR, "projector"),
        (["python3", "-m", "query_server"], "query server"),
        (["/usr/local/bin/python", "-X", "dev", "-m", "projector"], "projector"),
        (["python", "-m", "ledger.healthcheck", "--projector"], None),
        (["python", "-m", "projectors"], None),
        (["python", "-m", "command_server_tools"], None),
        (["python", "/opt/venv/bin/ledger-local"], None),
        (["sh", "-c", "ledger-projector"], None),
        ([], None),
    ],
)
def test_role_of_a_command_line(argv: list[str], role: str | None) -> None:
    found = healthcheck.role_of(argv)
    assert (found.name if found else None) == role


def test_roles_are_the_console_scripts_of_pyproject() -> None:
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    processes = {name: target for name, target in scripts.items() if name != "ledger-local"}
    assert {r.console_script for r in healthcheck.ROLES} == set(processes)
    for role in healthcheck.ROLES:
        assert processes[role.console_script].split(":")[0] == f"{role.module}.__main__"


@pytest.mark.parametrize(
    ("bind", "connect"),
    [
        (None, "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("::", "[::1]"),
        ("[::]", "[::1]"),
        ("10.1.2.3", "10.1.2.3"),
        ("fd00::5", "[fd00::5]"),
        ("ledger.internal", "ledger.internal"),
    ],
)
def test_connect_host(bind: str | None, connect: str) -> None:
    env = {} if bind is None else {"LEDGER_BIND_HOST": bind}
    assert healthcheck.connect_host(env) == connect


# -- the compose health checks against the real processes ------------------------------


def compose_app_services() -> dict[str, tuple[list[str], list[str]]]:
    """Service name -> (command, health check argv) for the services built from here."""
    loaded = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    return {
        name: ([str(w) for w in svc["command"]], [str(w) for w in svc["healthcheck"]["test"][1:]])
        for name, svc in loaded["services"].items()
        if "build" in svc
    }


@pytest.mark.parametrize("service", sorted(compose_app_services()))
async def test_compose_healthcheck_follows_the_real_process(service: str, tmp_path: Path) -> None:
    """The service's own command and health check, on the embedded stores and a free port:
    unhealthy before it is up, healthy once it serves, unhealthy again after SIGTERM, which
    it answers with exit status 0."""
    command, check = compose_app_services()[service]
    assert check[:3] == ["python", "-m", "ledger.healthcheck"], check
    port = str(free_port())
    args = [
        port if previous == "--port" else word
        for previous, word in itertools.pairwise(["", *check])
    ]
    env = {"LEDGER_DATA_DIR": str(tmp_path / "data")}
    env |= {"LEDGER_COMMAND_PORT": port, "LEDGER_QUERY_PORT": port}
    child_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEDGER_", "KURRENTDB_", "MONGODB_"))
    }
    assert (await probe(*args[3:], env=env)).code == 1, "healthy before it started"
    log_path = tmp_path / "process.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / command[0]),
            *command[1:],
            env=child_env | env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + PROBE_TIMEOUT
        while (result := await probe(*args[3:], env=env)).code != 0:
            assert proc.returncode is None, f"{command[0]} exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"{result.output}\n{log_path.read_text()}"
            await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), PROBE_TIMEOUT)
        assert code == 0, log_path.read_text()
        assert (await probe(*args[3:], env=env)).code == 1, "still healthy after it stopped"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
