"""`python -m client replay`: recorded sessions replayed as many simulated participants, with a report."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from server.arguments import nonnegative, whole

from . import stats
from .runner import planned_sessions, replay
from .trace import TraceError, load

NOTES_SHOWN = 10
"""Notes about the trace files printed before a run; a directory of many damaged files is summed up after these."""


def ws_url(text: str) -> str:
    """`--url` of `walk` and `replay`: anything else fails inside the WebSocket client with a bare KeyError."""
    if not text.startswith(("ws://", "wss://")) or not urllib.parse.urlsplit(text).netloc:
        raise argparse.ArgumentTypeError(f"must be a ws:// or wss:// URL, got {text}")
    return text


def _thresholds(text: str) -> list[stats.Threshold]:
    try:
        return stats.parse_thresholds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_replay_parser(commands: Any) -> None:
    r = commands.add_parser(
        "replay",
        help="replay recorded sessions as many simulated participants (a load test)",
        description="Replay the client side of recorded sessions against a server and check "
        "that each gets the same states and scenes as the recording.",
    )
    r.add_argument(
        "traces",
        nargs="+",
        metavar="TRACE_OR_DIR",
        help="session files (sessions/<id>.msgpack) or directories of them (a data directory)",
    )
    r.add_argument(
        "--url", type=ws_url, default="ws://127.0.0.1:8888/ws", help="the server's WebSocket URL (default: %(default)s)"
    )
    r.add_argument(
        "--sessions",
        type=whole(1),
        default=None,
        help="simulated participants, the traces taken in turn (default: one per trace)",
    )
    r.add_argument(
        "--concurrency",
        type=whole(1),
        default=None,
        help="sessions open at once at most (default: all of them)",
    )
    r.add_argument(
        "--speed",
        type=nonnegative,
        default=1.0,
        help="recorded timing divided by this; 0 = as fast as the replies come (default: %(default)s)",
    )
    r.add_argument(
        "--ramp",
        type=nonnegative,
        default=0.0,
        help="new sessions started per second; 0 = all at once (default: %(default)s)",
    )
    r.add_argument(
        "--max-seconds",
        type=nonnegative,
        default=600.0,
        help="hard limit on the run; sessions still open then count as unfinished (default: %(default)s)",
    )
    r.add_argument(
        "--timeout",
        type=nonnegative,
        default=10.0,
        help="seconds without an expected reply before a session counts as timed out (default: %(default)s)",
    )
    r.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write the report as JSON here, and as CSV next to it (same name, .csv)",
    )
    r.add_argument(
        "--fail-on",
        type=_thresholds,
        default=[],
        metavar="THRESHOLDS",
        help="exit 1 if any is crossed, e.g. p99>200ms,errors>0 (metrics: " + ", ".join(stats.METRICS) + ")",
    )
    r.add_argument("--no-progress", action="store_true", help="no live progress line")


def run_replay(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    notes: list[str] = []
    try:
        traces = load(args.traces, notes)
    except TraceError as exc:
        print(f"python -m client replay: error: {exc}", file=sys.stderr)
        return 2
    for note in notes[:NOTES_SHOWN]:
        print(f"python -m client replay: note: {note}", file=sys.stderr)
    if len(notes) > NOTES_SHOWN:
        print(f"python -m client replay: note: and {len(notes) - NOTES_SHOWN} more", file=sys.stderr)
    if args.report is not None and (problem := _unwritable(args.report)):
        print(f"python -m client replay: error: cannot write the report to {args.report}: {problem}", file=sys.stderr)
        return 2
    sessions = planned_sessions(traces, args.sessions or len(traces))  # whole groups for recorded matches
    concurrency = args.concurrency or sessions
    progress = Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        disable=args.no_progress,
        transient=False,
    )
    task = progress.add_task("", total=sessions)

    def on_done(c: stats.Collector, session: object) -> None:
        progress.update(
            task,
            completed=c.done,
            description=f"ok {c.statuses['ok']} diverged {c.statuses['diverged']} "
            f"failed {c.statuses['failed']} · sent {c.sent}",
        )

    collector = stats.Collector()
    started = time.monotonic()
    interrupted = False
    with progress:
        try:
            collector, duration = asyncio.run(
                replay(
                    traces,
                    args.url,
                    sessions=sessions,
                    concurrency=concurrency,
                    speed=args.speed,
                    ramp=args.ramp,
                    max_seconds=args.max_seconds,
                    timeout=args.timeout,
                    on_done=on_done,
                    collector=collector,
                )
            )
        except KeyboardInterrupt:  # Ctrl-C: the report of what ran so far, then the usual exit status for it
            interrupted, duration = True, time.monotonic() - started
        except Exception as exc:  # a replayer bug must still end with a named error, not a traceback
            print(
                f"python -m client replay: error: the replay itself failed: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            return 3
    report = collector.report(
        duration,
        url=args.url,
        traces=len(traces),
        planned=sessions,
        concurrency=concurrency,
        speed=args.speed,
        ramp=args.ramp,
    )
    report["sessions"]["not_started"] = sessions - collector.done
    report["interrupted"] = interrupted
    crossed = stats.breaches(report, args.fail_on)
    report["thresholds"] = {"checked": [t.text for t in args.fail_on], "crossed": crossed}
    _print(report)
    if args.report:
        try:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(report, indent=2))
            with open(args.report.with_suffix(".csv"), "w", newline="") as f:
                writer = csv.DictWriter(f, ["series", "name", "count", "p50", "p95", "p99", "max", "mean"])
                writer.writeheader()
                writer.writerows(stats.rows(report))
        except OSError as exc:
            print(
                f"python -m client replay: error: cannot write the report to {args.report}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        print(f"report: {args.report} and {args.report.with_suffix('.csv')}")
    for line in crossed:
        print(f"threshold crossed: {line}", file=sys.stderr)
    if interrupted:
        print("python -m client replay: interrupted; the figures are of what ran until then", file=sys.stderr)
        return 130
    return 1 if crossed else 0


def _unwritable(report: Path) -> str | None:
    """Why the report could not be written, found before the run rather than after it."""
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return str(exc.strerror)
    if report.is_dir():
        return "it is a directory"
    if not os.access(report.parent, os.W_OK) or (report.exists() and not os.access(report, os.W_OK)):
        return "permission denied"
    return None


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value:.1f}"


def _print(report: dict[str, Any]) -> None:
    out = Console(width=110)
    s = report["sessions"]
    m = report["messages"]
    out.print(
        f"sessions: ok {s['ok']}, diverged {s['diverged']}, failed {s['failed']}, unfinished {s['unfinished']}, "
        f"not started {s['not_started']} of {report['planned']} in {report['duration_s']:.2f} s"
    )
    out.print(
        f"messages: sent {m['sent']} ({m['sent_per_s'] or 0:.0f}/s), received {m['received']} "
        f"({m['received_per_s'] or 0:.0f}/s)"
    )
    if report["divergences"]:
        out.print("divergences: " + ", ".join(f"{k} {v}" for k, v in report["divergences"].items()))
        for kind, example in report["divergence_examples"].items():
            out.print(f"  e.g. {kind}: {example}")
    table = Table("series", "name", "count", "p50 ms", "p95 ms", "p99 ms", "max ms")
    for row in stats.rows(report):
        table.add_row(
            row["series"],
            row["name"],
            str(row["count"]),
            _ms(row["p50"]),
            _ms(row["p95"]),
            _ms(row["p99"]),
            _ms(row["max"]),
        )
    out.print(table)
