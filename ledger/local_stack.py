"""`ledger-local`: the whole system on the embedded defaults, for a developer's terminal.

Starts the command server, projector and query server as child processes (the same
processes a deployment runs), prints how to call them, and on Ctrl-C or SIGTERM stops
all three gracefully and waits for them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from ledger.settings import SettingsError, current, data_dir, port

PROCESSES = ("command_server", "projector", "query_server")


def _banner(command_port: int, query_port: int, data: str) -> str:
    return f"""
Ledger is running on the embedded SQLite stores in {data}
  command server  localhost:{command_port}  (ledger.v1.AccountCommandService)
  query server    localhost:{query_port}  (ledger.v1.AccountQueryService)

Try it (grpcurl or buf curl; both servers have reflection):
  grpcurl -plaintext \\
    -d '{{"request_id":"r1","account_id":"alice","owner_name":"Alice","currency":"EUR"}}' \\
    localhost:{command_port} ledger.v1.AccountCommandService/OpenAccount
  grpcurl -plaintext -d '{{"account_id":"alice"}}' \\
    localhost:{query_port} ledger.v1.AccountQueryService/GetAccount

Press Ctrl-C to stop all three.
"""


def main() -> None:
    env = current()
    try:
        command_port = port(env, "LEDGER_COMMAND_PORT", 50051)
        query_port = port(env, "LEDGER_QUERY_PORT", 50052)
        data = str(data_dir(env).resolve())
    except SettingsError as exc:
        print(f"ledger-local: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    children = [
        subprocess.Popen([sys.executable, "-m", name], env={**os.environ, "LEDGER_DATA_DIR": data})
        for name in PROCESSES
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(_banner(command_port, query_port, data), file=sys.stderr, flush=True)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    codes = [child.wait() for child in children]
    failed = {name: code for name, code in zip(PROCESSES, codes, strict=True) if code != 0}
    if failed and not stopping:
        print(f"ledger-local: stopped because a process exited: {failed}", file=sys.stderr)
        sys.exit(1)
    print("ledger-local: all three processes stopped", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
