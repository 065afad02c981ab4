"""`python -m statemachine diagram [--machine match]`: a lifecycle drawn from its own table.

An experiment's scene flow is `python -m server scenes`.
"""

from __future__ import annotations

import argparse
import sys

from .diagram import MACHINES, DiagramError, add_output_arguments, lifecycle, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m statemachine", description="Diagrams drawn from the lifecycle table the server runs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    diagram = commands.add_parser("diagram", help="draw the participant lifecycle, or the match lifecycle")
    diagram.add_argument(
        "--machine",
        choices=sorted(MACHINES),
        default="lifecycle",
        help="the participant's lifecycle or a multiplayer match's (default: %(default)s)",
    )
    add_output_arguments(diagram)
    args = parser.parse_args(argv)
    try:
        write(lifecycle(args.format, MACHINES[args.machine]), args.output)
    except DiagramError as exc:
        print(f"python -m statemachine: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
