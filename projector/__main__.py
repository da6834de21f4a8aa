"""`python -m projector`: maintains the views from the event log."""

from __future__ import annotations

import sys

from ledger.process import run_process
from projector.app import run


def main() -> None:
    sys.exit(run_process("projector", run))


if __name__ == "__main__":
    main()
