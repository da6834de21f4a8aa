"""Wake-ups across processes when an SQLite file gets a commit, instead of fast polling.

Polling `PRAGMA data_version` every 2 ms kept a subscriber near live, but cost each
idle subscriber about 5 % of a core. Instead, each process that follows a file has a
datagram socket in Linux's abstract namespace (no path, so no length limit and nothing
left on disk but its name), registered as an empty file named after it in
`<database>.listeners/`. The process that commits sends every listener of its network
namespace one byte after each commit. A listener watches its socket only while it
waits (ledger.sqlite_support.ChangeWatcher waits on it once commits have stopped
coming), so a signal to a busy one just waits in its queue and wakes nobody.

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
RELIST_SECONDS = 0.25
"""How often a sender lists the listeners again (a new one polls meanwhile)."""


def listeners_dir(database: Path) -> Path:
    return database.with_name(database.name + ".listeners")


def _namespace() -> str:
    """The network namespace (abstract socket names are only visible within one), as it
    starts a listener's name."""
    try:
        return os.readlink("/proc/self/ns/net").replace("/", "_")
    except OSError:
        return ""


def supported() -> bool:
    return sys.platform == "linux"


class CommitListener:
    """This process's wake-up socket for one database; `wait` returns on a signal."""

    def __init__(self, database: Path) -> None:
        """Raises OSError if it cannot listen (see `listen`)."""
        token = f"{_namespace()}-{secrets.token_hex(8)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.bind(NAME_PREFIX + token.encode())
            directory = listeners_dir(database)
            directory.mkdir(exist_ok=True)
            self._file = directory / token
            self._file.touch()
        except BaseException:
            self._sock.close()
            raise
        self._signalled = asyncio.Event()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._sock.recv(64):
                pass

    def _on_signal(self) -> None:
        self._drain()
        self._signalled.set()

    def clear(self) -> None:
        """Forget signals so far: call before looking at the database, so that a commit
        after the look is signalled anew."""
        self._drain()
        self._signalled.clear()

    async def wait(self, at_most: float) -> None:
        """Until a signal arrives (since the last `clear`), or `at_most` seconds pass.

        The socket is watched only meanwhile: a signal to a listener that is busy
        elsewhere waits in its queue, and wakes nobody."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self._sock.fileno(), self._on_signal)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most):
                    await self._signalled.wait()
        finally:
            loop.remove_reader(self._sock.fileno())

    def close(self) -> None:
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
    """Sends every listener of one database a byte after a commit.

    Call it on the event loop's thread once the commit's callers have their answers,
    not in the writer thread: each system call there hands the GIL back and forth, and
    a thread waiting to take it back behind a busy loop waits up to the switch interval
    (5 ms) with the writer's callers unanswered."""

    def __init__(self, database: Path) -> None:
        self._dir = listeners_dir(database)
        self._prefix = _namespace() + "-"
        self._sock: socket.socket | None = None
        self._names: list[str] = []
        self._listed_at = -RELIST_SECONDS

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
        now = time.monotonic()
        if now - self._listed_at > RELIST_SECONDS:
            self._listed_at = now
            try:
                self._names = [n for n in os.listdir(self._dir) if n.startswith(self._prefix)]
            except FileNotFoundError:
                self._names = []
        return self._names

    def _forget(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self._dir / name).unlink()
        self._names = [n for n in self._names if n != name]  # `send` iterates the old list

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
