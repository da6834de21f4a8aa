"""Starts the real Ledger processes on free ports, for end-to-end tests.

Each process is `python -m <package>` with its settings in environment variables, its
stdout (JSON log lines) and stderr captured to files under the test's directory. A
server counts as started once gRPC health says SERVING; the projector, which has no
gRPC port, once it logs "projection starting". Stopping sends SIGTERM and asserts the
exit code is 0. Whatever goes wrong, the error carries the processes' logs.

A `Backend` adds environment variables (LEDGER_EVENT_STORE, LEDGER_VIEW_STORE and their
URIs, ...) so the same scenarios run on every backend.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND_SERVER = "command_server"
PROJECTOR = "projector"
QUERY_SERVER = "query_server"
ALL = (COMMAND_SERVER, PROJECTOR, QUERY_SERVER)
PORT_VARIABLES = {COMMAND_SERVER: "LEDGER_COMMAND_PORT", QUERY_SERVER: "LEDGER_QUERY_PORT"}
# Variables the harness owns: inherited values would point the processes elsewhere.
OWN_PREFIXES = ("LEDGER_", "KURRENTDB_", "MONGODB_")

# Guards against hangs, not performance assertions: a healthy start takes about a second.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
LOG_TAIL = 80

_running: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        if proc.poll() is None:
            proc.kill()


class ProcessError(AssertionError):
    """A process did not start, stop or exit as the test expected (logs attached)."""


@dataclass(frozen=True)
class Backend:
    """How a stack stores its data: extra environment per stack (given a unique id).

    `copy_event_log(source, target)` makes `target` read a copy of `source`'s event log
    (for a full rebuild of the views next to the live ones); None if unsupported.
    """

    name: str
    env: Callable[[str], dict[str, str]] = lambda _stack_id: {}
    copy_event_log: Callable[[Stack, Stack], None] | None = None


def copy_sqlite_event_log(source: Stack, target: Stack) -> None:
    """A consistent copy (SQLite online backup) of source's events file into target's data dir."""
    target.data_dir.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source.data_dir / "events.sqlite3")
    dst = sqlite3.connect(target.data_dir / "events.sqlite3")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


SQLITE = Backend("sqlite", copy_event_log=copy_sqlite_event_log)


def log_records(path: Path) -> list[dict[str, Any]]:
    """The complete JSON log lines of a stdout file; fails on a line that is not a JSON object."""
    records = []
    # The last piece has no newline yet if the process is writing it right now.
    lines = path.read_text(errors="replace").split("\n")[:-1]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ProcessError(f"{path.name}:{number} is not a JSON log line: {line!r}") from None
        if not isinstance(record, dict):
            raise ProcessError(f"{path.name}:{number} is not a JSON object: {line!r}")
        records.append(record)
    return records


def _tail(path: Path, lines: int = LOG_TAIL) -> str:
    if not path.exists():
        return "(no output)"
    text = path.read_text(errors="replace").splitlines()
    skipped = len(text) - lines
    shown = "\n".join(text[-lines:]) if text else "(empty)"
    return f"... ({skipped} earlier lines)\n{shown}" if skipped > 0 else shown


class LedgerProcess:
    """One of the three programs, started with `python -m`, restartable."""

    def __init__(self, name: str, package: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.package = package
        self.env = dict(env)
        self.log_dir = log_dir
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        port_variable = PORT_VARIABLES.get(package)
        if port_variable is not None and port_variable not in self.env:
            self.env[port_variable] = str(free_port())
        if port_variable is not None and self.env[port_variable].isdigit():
            self.port = int(self.env[port_variable])  # else a bad setting, on purpose

    @property
    def target(self) -> str:
        assert self.port is not None, f"{self.name} has no gRPC port"
        return f"127.0.0.1:{self.port}"

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.runs}.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.runs}.stderr.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records of the current (or last) run."""
        return log_records(self.stdout_path)

    def wait_for_record(self, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first log record of the current run that `matches`, once it is written."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = next((r for r in self.records() if matches(r)), None)
            if found is not None:
                return found
            if not self.running:
                break
            time.sleep(0.02)
        raise ProcessError(f"{self.name}: no such log record\n{self.describe()}")

    def describe(self) -> str:
        parts = []
        for run in range(1, self.runs + 1):
            out = self.log_dir / f"{self.name}.{run}.stdout.log"
            err = self.log_dir / f"{self.name}.{run}.stderr.log"
            parts.append(f"--- {self.name} run {run} stdout ({out})\n{_tail(out)}")
            if err.exists() and err.stat().st_size:
                parts.append(f"--- {self.name} run {run} stderr ({err})\n{_tail(err)}")
        return "\n".join(parts) or f"--- {self.name}: never started"

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the program and return at once (see `start` to wait until it is ready)."""
        assert not self.running, f"{self.name} is already running"
        self.runs += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.package],
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        _running.add(self.proc)
        return self.proc

    def start(self) -> None:
        """Start and wait until ready."""
        self.spawn()
        self.finish_start()

    def finish_start(self) -> None:
        """Wait until a spawned process is ready; a lost race for its port is retried."""
        for _attempt in range(3):
            if self.wait_ready():
                return
            if self.port is None or not self._lost_port_race():
                break
            port_variable = PORT_VARIABLES[self.package]
            self.port = free_port()
            self.env[port_variable] = str(self.port)
            self.spawn()
        raise ProcessError(f"{self.name} did not become ready\n{self.describe()}")

    def wait_ready(self) -> bool:
        """True once ready; False if the process exited first."""
        deadline = time.monotonic() + START_TIMEOUT
        channel = grpc.insecure_channel(self.target) if self.port is not None else None
        try:
            while time.monotonic() < deadline:
                if not self.running:
                    return False
                if channel is not None and self._serving(channel):
                    return True
                if self.package == PROJECTOR and any(
                    r.get("msg") == "projection starting" for r in self.records()
                ):
                    return True
                time.sleep(0.02)
        finally:
            if channel is not None:
                channel.close()
        self.kill()
        raise ProcessError(f"{self.name} not ready after {START_TIMEOUT}s\n{self.describe()}")

    def _lost_port_race(self) -> bool:
        output = self.stdout_path.read_text(errors="replace")
        output += self.stderr_path.read_text(errors="replace")
        return "cannot bind" in output or "Failed to bind" in output

    @staticmethod
    def _serving(channel: grpc.Channel) -> bool:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def terminate(self) -> None:
        """Send SIGTERM and return at once (see `wait_exit`)."""
        assert self.proc is not None, f"{self.name} was never started"
        assert self.running, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        try:
            code = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise ProcessError(
                f"{self.name} still running {STOP_TIMEOUT}s after SIGTERM\n{self.describe()}"
            ) from None
        finally:
            _running.discard(self.proc)
        return code

    def stop(self) -> None:
        """SIGTERM, then assert a clean exit (code 0)."""
        self.terminate()
        code = self.wait_exit()
        if code != 0:
            raise ProcessError(f"{self.name} exited {code} after SIGTERM\n{self.describe()}")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        if self.proc is not None and self.running:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            _running.discard(self.proc)

    def restart(self) -> None:
        if self.running:
            self.stop()
        self.start()


@dataclass
class Stack:
    """Command server, projector and query server sharing one data dir (or backend)."""

    root: Path
    backend: Backend = SQLITE
    extra_env: Mapping[str, str] = field(default_factory=dict)
    stack_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    processes: dict[str, LedgerProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "logs"
        for package in ALL:
            self.processes[package] = LedgerProcess(package, package, self.env(), self.log_dir)

    def env(self, **overrides: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
        return {
            **base,
            "PYTHONUNBUFFERED": "1",
            "LEDGER_DATA_DIR": str(self.data_dir),
            "LEDGER_LOG_LEVEL": "info",
            **self.backend.env(self.stack_id),
            **self.extra_env,
            **overrides,
        }

    def __getitem__(self, name: str) -> LedgerProcess:
        return self.processes[name]

    @property
    def command_target(self) -> str:
        return self[COMMAND_SERVER].target

    @property
    def query_target(self) -> str:
        return self[QUERY_SERVER].target

    def start(self, *names: str) -> Stack:
        """Start the named processes (all three by default) side by side, wait until all
        are ready (they need not start in any order: each waits for its stores)."""
        chosen = [self[name] for name in names or ALL]
        for process in chosen:
            process.spawn()
        try:
            for process in chosen:
                process.finish_start()
        except BaseException:
            for process in chosen:
                process.kill()
            raise
        return self

    def add(self, name: str, package: str, **overrides: str) -> LedgerProcess:
        """Another instance of a program on this stack's data (e.g. a second command server)."""
        assert name not in self.processes, name
        env = self.env(**overrides)
        port_variable = PORT_VARIABLES.get(package, "")
        if port_variable not in overrides:
            env.pop(port_variable, None)  # a port of its own
        process = LedgerProcess(name, package, env, self.log_dir)
        self.processes[name] = process
        return process

    def close(self) -> None:
        """Stop everything still running, asserting each exits 0 on SIGTERM."""
        failures = []
        for process in reversed(list(self.processes.values())):
            if process.running:
                try:
                    process.stop()
                except ProcessError as exc:
                    failures.append(str(exc))
        if failures:
            raise ProcessError("\n".join(failures))

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.processes.values() if p.runs)

    def __iter__(self) -> Iterator[LedgerProcess]:
        return iter(self.processes.values())


def run_to_exit(
    package: str, env: Mapping[str, str], log_dir: Path, timeout: float = STOP_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a program expected to exit by itself (e.g. on a bad setting)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(
            [sys.executable, "-m", package],
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcessError(f"{package} did not exit within {timeout}s: {exc.stdout!r}") from None
