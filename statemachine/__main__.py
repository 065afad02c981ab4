"""`python -m statemachine diagram`: draw the lifecycle, or an experiment's scene flow, from the code itself."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .diagram import FORMATS, DiagramError, lifecycle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m statemachine", description="Diagrams drawn from the lifecycle table the server runs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    d = commands.add_parser("diagram", help="draw the participant lifecycle (or, with --scenes, an experiment)")
    d.add_argument(
        "--format",
        choices=FORMATS,
        default="mermaid",
        help="mermaid text, Graphviz dot source, or SVG rendered by Graphviz (default: %(default)s)",
    )
    d.add_argument("--output", "-o", type=Path, default=None, help="write to FILE instead of standard output")
    d.add_argument("--scenes", action="store_true", help="draw the scene flow of --experiment instead of the lifecycle")
    d.add_argument(
        "--experiment",
        default=None,
        help="with --scenes: a Python file (path/to/study.py[:name]) or module defining an Experiment "
        "(default: the built-in example)",
    )
    args = parser.parse_args(argv)
    if args.experiment is not None and not args.scenes:
        parser.error("--experiment is only used with --scenes")

    try:
        if args.scenes:
            from server.loader import DEFAULT, ExperimentError, load_experiment

            from .scenes import scene_flow

            try:
                experiment = load_experiment(args.experiment or DEFAULT)
            except ExperimentError as exc:
                raise DiagramError(str(exc)) from None
            text = scene_flow(experiment, args.format)
        else:
            text = lifecycle(args.format)
    except DiagramError as exc:
        print(f"python -m statemachine: error: {exc}", file=sys.stderr)
        return 2

    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"python -m statemachine: error: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
