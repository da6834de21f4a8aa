"""`python -m projector`: maintains the views from the event log.

Operator commands (run next to the projector, with the same settings):

    python -m projector parked                 list the parked events
    python -m projector retry [--position P]   apply them again, after a fix
"""

from __future__ import annotations

import argparse
import sys

from ledger.process import run_process
from projector.app import run
from projector.operator import run_command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m projector", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("parked", help="list the events the projector parked")
    retry = commands.add_parser("retry", help="apply the parked events again")
    retry.add_argument("--position", type=int, help="only the event at this log position")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        sys.exit(run_process("projector", run))
    sys.exit(run_command(args.command, args.position if args.command == "retry" else None))


if __name__ == "__main__":
    main()
