"""nx-27017 as a stand-in MongoDB: a real wire-protocol server in a child process.

    from tests.standins.mongo import nx_27017, nx_27017_server  # fixture, module scope

    def test_something(nx_27017_server: MongoStandIn) -> None:
        client = MongoClient(nx_27017_server.uri)

or, outside pytest, `with nx_27017() as server: ...`. Each server gets a free port,
its own pid and log files (nx-27017 refuses to start when its default pid file,
shared by every instance, names a live process) and, by default, in-memory databases
(`--data-dir memory`: each database is its own SQLite database, isolated).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.conftest import free_port

# Guards against hangs, not performance assertions: nx-27017 answers in ~0.3 s.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 5


class StandInError(RuntimeError):
    """The stand-in server did not start (its log is attached)."""


def _command() -> list[str]:
    script = Path(sys.executable).with_name("nx-27017")
    if script.exists():
        return [str(script)]
    found = shutil.which("nx-27017")
    if found:
        return [found]
    return [sys.executable, "-c", "from nx_27017.nx_27017 import main; main()"]


def uri_for(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


@dataclass
class MongoStandIn:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    @property
    def uri(self) -> str:
        return uri_for(self.port)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.process.poll() is None

    def answers(self, timeout: float = 0.5) -> bool:
        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=round(timeout * 1000), connectTimeoutMS=500
        )
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_nx_27017(data_dir: Path | None = None, port: int | None = None) -> MongoStandIn:
    """Start nx-27017 on `port` (default: a free loopback port) and wait until it
    answers ping.

    `data_dir` keeps the databases in files there, so a server restarted with the same
    `data_dir` and `port` (an outage) finds them again; by default they live in memory
    and vanish with the process.
    """
    workdir = Path(tempfile.mkdtemp(prefix="nx-27017-"))
    failures: list[str] = []
    for _ in range(1 if port is not None else PORT_ATTEMPTS):
        chosen = free_port() if port is None else port
        log_path = workdir / f"nx-27017-{chosen}.out"
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [
                    *_command(),
                    "--host",
                    "127.0.0.1",
                    "-p",
                    str(chosen),
                    "--data-dir",
                    "memory" if data_dir is None else str(data_dir),
                    "--pid-file",
                    str(workdir / f"nx-27017-{chosen}.pid"),
                    "--log-file",
                    str(workdir / f"nx-27017-{chosen}.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = MongoStandIn(chosen, process, workdir, log_path)
        deadline = time.monotonic() + START_TIMEOUT
        while server.running() and time.monotonic() < deadline:
            if server.answers():
                return server
            time.sleep(0.05)
        server.stop()
        failures.append(f"port {chosen} (exit {process.returncode}):\n{server.log()[-4000:]}")
    shutil.rmtree(workdir, ignore_errors=True)
    raise StandInError("nx-27017 did not start:\n" + "\n".join(failures))


@contextmanager
def nx_27017(data_dir: Path | None = None, port: int | None = None) -> Iterator[MongoStandIn]:
    server = start_nx_27017(data_dir, port)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def nx_27017_server() -> Iterator[MongoStandIn]:
    """One nx-27017 per test module; give each test its own database name."""
    with nx_27017() as server:
        yield server
