"""Wake-ups across processes when an SQLite file gets a commit, instead of fast polling.

Polling `PRAGMA data_version` every 2 ms kept a subscriber near live, but cost each
idle subscriber about 5 % of a core, and under load about a tenth of a millisecond of
CPU per event (docs/benchmarks.md). Instead, each process that follows a file listens
on a datagram socket in Linux's abstract namespace (no path, so no length limit and
nothing left on disk but its name), registered as an empty file named after it in
`<database>.listeners/`. The process that commits sends every listener of its network
namespace one byte after each commit; a listener wakes, drains what arrived, and looks.

Nothing depends on a byte arriving. A send that finds a listener's queue full is
dropped: that listener has wake-ups pending already, and reads everything committed
when it wakes. A listener also still polls, slowly (ledger.sqlite_support.ChangeWatcher),
for writers that send nothing: another network namespace (containers sharing a
volume), the sqlite3 shell, an older version. Where abstract sockets do not exist
(not Linux), or the directory cannot be written, there is no listener and the poll is
the fast one it always was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path

log = logging.getLogger("ledger.commit_signals")
NAME_PREFIX = b"\0ledger-commit-"
RELIST_EVERY_NS = 1_000_000_000
"""A sender lists the listeners again at least this often..."""
COARSE_CLOCK_NS = 50_000_000
"""...and whenever the directory changed less than this long before the last listing:
directory times come from a coarse clock (a few ms), so a listener registered in the
same tick as a listing leaves the time unchanged."""


def listeners_dir(database: Path) -> Path:
    return database.with_name(database.name + ".listeners")


def _namespace() -> str:
    """The network namespace: abstract socket names are only visible within one."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


def supported() -> bool:
    return sys.platform == "linux"


class CommitListener:
    """This process's wake-up socket for one database; `wait` returns on a signal."""

    def __init__(self, database: Path) -> None:
        """Raises OSError if it cannot listen (see `listen`)."""
        self._token = f"{_namespace()}-{secrets.token_hex(8)}".replace("/", "_")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.bind(NAME_PREFIX + self._token.encode())
            directory = listeners_dir(database)
            directory.mkdir(exist_ok=True)
            self._file = directory / self._token
            self._file.touch()
        except BaseException:
            self._sock.close()
            raise
        self._signalled = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._drain)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._sock.recv(64):
                pass
        self._signalled.set()

    def clear(self) -> None:
        """Forget signals so far: call before looking at the database, so that a commit
        after the look is signalled anew."""
        self._signalled.clear()

    async def wait(self, at_most: float) -> None:
        """Until a signal arrives (since the last `clear`), or `at_most` seconds pass."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._signalled.wait()

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(OSError):
            self._file.unlink()


def listen(database: Path) -> CommitListener | None:
    """A listener for `database`, or None where there can be none (then poll fast)."""
    if not supported():
        return None
    try:
        return CommitListener(database)
    except OSError as exc:
        log.info(
            "no commit signals, polling instead",
            extra={"path": str(database), "error": str(exc)},
        )
        return None


class CommitSignaller:
    """Sends every listener of one database a byte; called by its single writer thread."""

    def __init__(self, database: Path) -> None:
        self._dir = listeners_dir(database)
        self._prefix = _namespace().replace("/", "_") + "-"
        self._sock: socket.socket | None = None
        self._names: list[str] = []
        self._seen_mtime = -1
        self._listed_at = 0

    def send(self) -> None:
        """Never raises: a signal is only a hint."""
        if not supported():
            return
        try:
            names = self._listeners()
            if not names:
                return
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
        except OSError:
            return
        for name in names:
            try:
                self._sock.sendto(b"!", NAME_PREFIX + name.encode())
            except (BlockingIOError, InterruptedError):
                continue  # its queue is full: it has wake-ups pending already
            except (ConnectionRefusedError, FileNotFoundError):
                self._forget(name)  # nobody listens there: its process is gone
            except OSError:
                continue

    def _listeners(self) -> list[str]:
        now = time.time_ns()
        try:
            mtime = self._dir.stat().st_mtime_ns
        except FileNotFoundError:
            self._names = []
            return self._names
        stale = (
            mtime != self._seen_mtime
            or self._listed_at - mtime < COARSE_CLOCK_NS
            or now - self._listed_at > RELIST_EVERY_NS
        )
        if stale:
            self._listed_at, self._seen_mtime = now, mtime
            self._names = [n for n in os.listdir(self._dir) if n.startswith(self._prefix)]
        return self._names

    def _forget(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self._dir / name).unlink()
        self._names = [n for n in self._names if n != name]  # `send` iterates the old list

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
