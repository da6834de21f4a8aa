"""`python -m query_server`: the read side, on the view store the environment picks."""

from __future__ import annotations

import sys

from ledger.process import run_process
from query_server.app import run


def main() -> None:
    sys.exit(run_process("query_server", run))


if __name__ == "__main__":
    main()
