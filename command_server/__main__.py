"""`python -m command_server`: the command side, on the backends the environment picks."""

from __future__ import annotations

import sys

from command_server.app import run
from ledger.process import run_process


def main() -> None:
    sys.exit(run_process("command_server", run))


if __name__ == "__main__":
    main()
