"""`python -m server export`: the data directory as tidy tables for analysis.

Two tables: `events` (one row per record of every session, frames included) and
`participants` (one row per session: who, what order, screening, preload timings,
outcome and timings). Sessions cut short by a crash are exported as far as they go.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .records import PreloadReport, SessionRecords, read_session
from .store import read_records, torn_bytes

EVENT_COLUMNS = ["session_id", "participant_id", "n", "kind", "t", "wall", "dir", "type", "scene_id", "data"]
PARTICIPANT_COLUMNS = [
    "session_id",
    "participant_id",
    "params",
    "seed",
    "scene_order",
    "user_agent",
    "screening_verdict",
    "screening_rtt_ms",
    "screening_facts",
    "preload_status",
    "preload_runtime_ms",
    "preload_micropip_ms",
    "preload_packages_ms",
    "preload_models_ms",
    "preload_ready_ms",
    "preload_error",
    "game_events",
    "steps",
    "outcome",
    "final_state",
    "started_wall",
    "ended_wall",
    "duration_s",
    "time_to_ready_s",
    "frames_in",
    "frames_out",
    "records",
    "torn_bytes",
]


class ExportError(Exception):
    """The data directory cannot be exported; the message names the problem."""


def session_files(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        raise ExportError(f"data directory not found: {data_dir}")
    sessions = data_dir / "sessions"
    files = sorted(sessions.glob("*.msgpack")) if sessions.is_dir() else []
    if not files:
        raise ExportError(f"no sessions in {data_dir} (expected {sessions}/<id>.msgpack files)")
    return files


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("kind", "t", "wall", "dir", "scene_id")}


STEP_COLUMNS = [
    "session_id", "participant_id", "scene_id", "episode", "step", "seed", "action", "reward", "terminated",
    "truncated", "info", "keys", "t", "visible", "observation", "actions", "by", "rewards", "probs", "bot_ms",
]  # fmt: skip


def steps(session_id: str, records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One row per step of every game the participant played, with the seed its episode was reset with."""
    participant = next((r.get("participant_id") for r in records if r["kind"] == "begin"), None)
    seeds: dict[str, list[int]] = {}
    for record in records:
        if record["kind"] == "scene" and record.get("seeds"):
            seeds[record["scene_id"]] = record["seeds"]
        elif record["kind"] == "steps":
            scene_seeds = seeds.get(record["scene_id"], [])
            for step in record["steps"]:
                episode = step.get("episode", 0)
                yield {
                    **{c: step.get(c) for c in STEP_COLUMNS},
                    "session_id": session_id,
                    "participant_id": participant,
                    "scene_id": record["scene_id"],
                    "seed": scene_seeds[episode] if episode < len(scene_seeds) else None,
                }


def events(session_id: str, records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One row per record; what is specific to its kind goes into `data`."""
    participant = next((r.get("participant_id") for r in records if r["kind"] == "begin"), None)
    for n, record in enumerate(records):
        message = record.get("message")
        data = _fields(record)
        if isinstance(message, dict):
            data = {k: v for k, v in message.items() if k != "type"}
        yield {
            "session_id": session_id,
            "participant_id": participant,
            "n": n,
            "kind": record["kind"],
            "t": record.get("t"),
            "wall": record.get("wall"),
            "dir": record.get("dir"),
            "type": message.get("type") if isinstance(message, dict) else None,
            "scene_id": record.get("scene_id"),
            "data": data,
        }


def participant(summary: SessionRecords, torn: int) -> dict[str, Any]:
    """One row for a session: everything an analysis joins on, with its timings."""
    row: dict[str, Any] = dict.fromkeys(PARTICIPANT_COLUMNS)
    if (begin := summary.begin) is not None:
        row.update(
            participant_id=begin.participant_id,
            params=begin.params,
            seed=begin.seed,
            scene_order=begin.order,
            user_agent=begin.user_agent,
        )
    if (screening := summary.screening) is not None:
        row.update(
            screening_verdict=",".join(screening.verdict or []) or "passed",
            screening_rtt_ms=screening.rtt_ms,
            screening_facts=screening.facts,
        )
    row.update(_preload_columns(summary.preload))
    row.update(
        session_id=summary.session_id,
        game_events=summary.game_events,
        steps=summary.steps,
        outcome=summary.outcome,
        final_state=summary.final_state,
        started_wall=summary.first_wall,
        ended_wall=summary.last_wall,
        duration_s=summary.duration_s,
        time_to_ready_s=summary.time_to_ready_s,
        frames_in=summary.frames_in,
        frames_out=summary.frames_out,
        records=summary.count,
        torn_bytes=torn,
    )
    return row


def _preload_columns(reports: list[PreloadReport]) -> dict[str, Any]:
    """How the preload went: when each stage was reached, and how it ended (ready in so long, or which error)."""
    row: dict[str, Any] = {c: None for c in PARTICIPANT_COLUMNS if c.startswith("preload_")}
    for report in reports:
        stage, status = report.report.get("stage"), report.report.get("status")
        if status == "loading" and stage in ("runtime", "micropip", "packages"):
            row[f"preload_{stage}_ms"] = report.report.get("elapsed_ms")
        elif status == "ready":
            row.update(preload_status=status, preload_ready_ms=report.report.get("elapsed_ms"))
        elif status == "error":
            row.update(preload_status=status, preload_error=report.report.get("error"))
        else:
            row["preload_status"] = row["preload_status"] or status
    return row


def export(data_dir: Path, fmt: str, output: Path) -> dict[str, int]:
    """Write `events`, `participants` and `steps` tables to `output`; returns the row counts."""
    files = session_files(data_dir)
    output.mkdir(parents=True, exist_ok=True)
    counts = {"participants": 0, "events": 0, "steps": 0}
    with (
        _Table(output / f"events.{fmt}", EVENT_COLUMNS) as ev,
        _Table(output / f"participants.{fmt}", PARTICIPANT_COLUMNS) as people,
        _Table(output / f"steps.{fmt}", STEP_COLUMNS) as played,
    ):
        for path in files:
            records = list(read_records(path))
            for row in events(path.stem, records):
                ev.write(row)
                counts["events"] += 1
            for row in steps(path.stem, records):
                played.write(row)
                counts["steps"] += 1
            people.write(participant(read_session(path.stem, records), torn_bytes(path)))
            counts["participants"] += 1
    return counts


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A CSV cell starting with one of these is a formula to a spreadsheet; OWASP's rule: prefix a `'`."""


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs (CSV injection)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _plain(value: Any) -> Any:
    """JSON-safe: bytes as hex, and a non-finite number (only in data stored before it was refused) as its name."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": strictly valid JSON, and not silently a number
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Table:
    """One output file, JSON lines or CSV (nested values as JSON text in their cell)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns

    def __enter__(self) -> _Table:
        self.file = open(self.path, "w", newline="")
        if self.path.suffix == ".csv":
            self.csv = csv.DictWriter(self.file, self.columns)
            self.csv.writeheader()
        return self

    def write(self, row: dict[str, Any]) -> None:
        row = {k: _plain(v) for k, v in row.items()}
        if self.path.suffix == ".csv":
            cells = {k: json.dumps(v, allow_nan=False) if isinstance(v, (dict, list)) else v for k, v in row.items()}
            self.csv.writerow({k: safe_cell(v) for k, v in cells.items()})
        else:
            self.file.write(json.dumps(row, allow_nan=False) + "\n")

    def __exit__(self, *exc: Any) -> None:
        self.file.close()


def main(argv: Iterable[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server export", description="Write a data directory's sessions as tidy tables."
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="the server's data directory (default: %(default)s)"
    )
    parser.add_argument("--format", choices=("jsonl", "csv"), default="csv", help="table format (default: %(default)s)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="directory for events.<fmt> and participants.<fmt> (default: DATA_DIR/export)",
    )
    args = parser.parse_args(list(argv))
    output = args.output or args.data_dir / "export"
    try:
        counts = export(args.data_dir, args.format, output)
    except ExportError as exc:
        print(f"python -m server export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"python -m server export: error: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return 2
    print(
        f"{counts['participants']} participants, {counts['events']} events, {counts['steps']} steps → "
        f"{output / ('participants.' + args.format)}, {output / ('events.' + args.format)}, "
        f"{output / ('steps.' + args.format)}"
    )
    return 0
