"""`python -m statemachine diagram`: the lifecycle, drawn from its own table (scenes: `python -m server scenes`)."""

from __future__ import annotations

import argparse
import sys

from .diagram import DiagramError, add_output_arguments, lifecycle, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m statemachine", description="Diagrams drawn from the lifecycle table the server runs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_output_arguments(commands.add_parser("diagram", help="draw the participant lifecycle"))
    args = parser.parse_args(argv)
    try:
        write(lifecycle(args.format), args.output)
    except DiagramError as exc:
        print(f"python -m statemachine: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
