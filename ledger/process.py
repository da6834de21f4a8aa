"""The entry point every process shares: logs, settings errors, the event loop."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable

from ledger import logs
from ledger.settings import Env, SettingsError, current


def use_uvloop() -> None:
    """Run the process's event loop on uvloop, which grpc.aio supports: each callback,
    task switch and thread-pool wake-up costs less than on the default loop. Left as is
    where uvloop is not installed (it is a dependency except on Windows)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_process(name: str, run: Callable[[Env], Awaitable[int]]) -> int:
    env = current()
    try:
        logs.configure(name, env)
        use_uvloop()
        return asyncio.run(run(env))  # type: ignore[arg-type]
    except SettingsError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        logging.getLogger("ledger").error("configuration error", extra={"error": str(exc)})
        return 2
    except KeyboardInterrupt:
        return 0
