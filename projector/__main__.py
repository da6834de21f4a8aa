"""`python -m projector`: maintains the views from the event log.

Operator commands (run next to the projector, with the same settings):

    python -m projector parked                 list the parked events
    python -m projector retry [--position P]   apply them again, after a fix
    python -m projector rebuild [--no-wait]    rebuild the views beside the live ones,
                                               showing progress until readers switch
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
    rebuild = commands.add_parser(
        "rebuild", help="rebuild the views from the log beside the live ones, then switch"
    )
    rebuild.add_argument(
        "--no-wait", action="store_true", help="ask for the rebuild and exit at once"
    )
    rebuild.add_argument(
        "--pickup-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up waiting if no projector takes the request up in time (default 30)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        sys.exit(run_process("projector", run))
    if args.command == "rebuild":
        sys.exit(run_command("rebuild", wait=not args.no_wait, pickup_timeout=args.pickup_timeout))
    sys.exit(run_command(args.command, position=getattr(args, "position", None)))


if __name__ == "__main__":
    main()
