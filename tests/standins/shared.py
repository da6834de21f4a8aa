"""Stand-in servers for end-to-end stacks: started on first use, stopped when pytest exits.

One nx-27017 serves every stack (each stack gets its own database); each stack gets its
own KurrentDB stand-in process, so one stack's projector never sees another's events.
"""

from __future__ import annotations

import atexit
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port
from tests.standins.mongo import MongoStandIn, start_nx_27017

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0  # a guard against a hang, not a measurement

_mongo: MongoStandIn | None = None
_kurrentdb: dict[str, tuple[subprocess.Popen[bytes], str]] = {}


def mongodb_uri() -> str:
    global _mongo
    if _mongo is None:
        _mongo = start_nx_27017()
        atexit.register(_mongo.stop)
    return _mongo.uri


def kurrentdb_uri(key: str) -> str:
    """The URI of the KurrentDB stand-in process for `key`, started if need be."""
    if key not in _kurrentdb:
        port = free_port()
        log = Path(tempfile.mkdtemp(prefix="kurrentdb-standin-")) / "out.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.standins.kurrentdb_server", "--port", str(port)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        atexit.register(proc.kill)
        deadline = time.monotonic() + START_TIMEOUT
        while "listening on" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"KurrentDB stand-in did not start: {log.read_text()!r}")
            time.sleep(0.05)
        _kurrentdb[key] = (proc, f"kurrentdb://127.0.0.1:{port}?tls=false")
    return _kurrentdb[key][1]
