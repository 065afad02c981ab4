"""`python -m server export`: the data directory as tidy tables for analysis.

Per session: `events` (one row per record, frames included), `participants` (one row per session: who, what
order, screening, preload timings, the matches they played, outcome and timings) and `steps` (one row per game
step). Per multiplayer match, from its canonical log: `matches` (one row per match, with the export's replay
check) and `frames` (one row per frame and agent). Sessions and matches cut short by a crash are exported as far
as they go; torn records are skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .experiment import Experiment, GymScene
from .loader import ExperimentError, StudySource, load_study
from .match_check import Checked, check
from .records import MatchRecords, PreloadReport, SessionRecords, read_match, read_session
from .store import read_records, torn_bytes

EVENT_COLUMNS = ["session_id", "participant_id", "n", "kind", "t", "wall", "dir", "type", "scene_id", "data"]
PARTICIPANT_COLUMNS = [
    "session_id",
    "experiment",
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
    "failed_games",
    "matches",
    "unmatched",
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
    "match_id", "agent", "frame",
]  # fmt: skip


def steps(
    session_id: str, records: list[dict[str, Any]], match_seeds: Mapping[str, list[int]] | None = None
) -> Iterator[dict[str, Any]]:
    """One row per step of every game the participant played, with the seed its episode was reset with (a
    multiplayer step's: its match's, from `match_seeds`), and in a match the agent the participant played."""
    participant = next((r.get("participant_id") for r in records if r["kind"] == "begin"), None)
    seeds: dict[str, list[int]] = {}
    agents: dict[str, Any] = {}  # match id -> the agent this participant played in it
    for record in records:
        if record["kind"] == "scene" and record.get("seeds"):
            seeds[record["scene_id"]] = record["seeds"]
        elif record["kind"] == "match" and isinstance(record.get("match_id"), str):
            agents[record["match_id"]] = record.get("agent")
        elif record["kind"] == "steps":
            for step in record["steps"]:
                episode = step.get("episode", 0)
                match_id = step.get("match_id")
                scene_seeds = seeds.get(record["scene_id"], [])
                if isinstance(match_id, str):
                    scene_seeds = (match_seeds or {}).get(match_id, [])
                yield {
                    **{c: step.get(c) for c in STEP_COLUMNS},
                    "session_id": session_id,
                    "participant_id": participant,
                    "scene_id": record["scene_id"],
                    "seed": scene_seeds[episode] if episode < len(scene_seeds) else None,
                    "agent": agents.get(match_id) if isinstance(match_id, str) else None,
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
            experiment=begin.experiment,
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
        failed_games=[{"scene_id": g.scene_id, "error": g.summary.get("error")} for g in summary.games if g.failed],
        matches=[{"scene_id": m.scene_id, "match_id": m.match_id, "agent": m.agent} for m in summary.matches],
        unmatched=[{"scene_id": u.scene_id, "then": u.then} for u in summary.unmatched],
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


MATCH_COLUMNS = [
    "match_id", "scene_id", "outcome", "environment", "seed", "seeds", "input_delay", "fps", "input", "frames",
    "filled", "hashes", "desync_f", "started_wall", "ended_wall", "duration_s", "replay_check", "records",
    "torn_bytes",
]  # fmt: skip
AGENT_COLUMNS = ["", "_participant_id", "_session_id", "_bot", "_bot_from_f", "_filled"]
"""Each agent's column set in the matches table, `agent1`, `agent1_participant_id`, ...: who played the slot (a
participant's session, or a bot: its policy, and from which frame), and how many of its inputs the server filled."""
FRAME_COLUMNS = ["match_id", "f", "agent", "action", "filled", "bot", "t", "wall"]


def match_files(data_dir: Path) -> list[Path]:
    folder = data_dir / "matches"
    return sorted(folder.glob("*.msgpack")) if folder.is_dir() else []


def scene_rules(experiment: Experiment | None) -> dict[str, dict[str, Any]]:
    """Each game scene's episodes and max_steps by scene id, for logs whose match record does not keep them."""
    rules: dict[str, dict[str, Any]] = {}
    for scene in experiment.leaves() if experiment is not None else ():
        if isinstance(scene, GymScene):
            rules.setdefault(scene.scene_id, {"episodes": scene.episodes, "max_steps": scene.max_steps})
    return rules


def agent_columns(count: int) -> list[str]:
    return [f"agent{i}{suffix}" for i in range(1, count + 1) for suffix in AGENT_COLUMNS]


def _policy(payload: Any) -> str | None:
    """A bot's policy in a word: random, python:<module:function> or onnx:<model path>."""
    policy = payload.get("policy") if isinstance(payload, dict) else None
    if not isinstance(policy, dict):
        return None
    kind = policy.get("kind")
    detail = policy.get("spec") if kind == "python" else policy.get("path") if kind == "onnx" else None
    return f"{kind}:{detail}" if detail else str(kind)


def match_row(summary: MatchRecords, checked: Checked, torn: int) -> dict[str, Any]:
    """One row for a match: what it was, how it went, who played each agent, and the replay check."""
    start = summary.start or {}
    end = summary.end or {}
    row: dict[str, Any] = dict.fromkeys(MATCH_COLUMNS)
    started, ended = start.get("wall"), end.get("wall")
    row.update(
        match_id=start.get("match_id", summary.match_id),
        scene_id=start.get("scene_id"),
        outcome=summary.outcome,
        environment=start.get("environment"),
        seed=start.get("seed"),
        seeds=start.get("seeds"),
        input_delay=start.get("input_delay"),
        fps=start.get("fps"),
        input=start.get("input"),
        frames=summary.last_frame,
        filled=sum(len(frame.get("filled") or []) for frame in summary.frames),
        hashes=len(summary.hashes),
        desync_f=summary.desync_f,
        started_wall=started,
        ended_wall=ended,
        duration_s=ended - started if isinstance(started, float) and isinstance(ended, float) else None,
        replay_check=checked.result,
        records=summary.count,
        torn_bytes=torn,
    )
    participants = start.get("participants") or {}
    bot_from = summary.bot_from()
    for i, (agent, payload) in enumerate((start.get("agents") or {}).items(), 1):
        who = participants.get(agent) or {}
        is_bot = isinstance(payload, dict) and payload.get("kind") == "bot"
        row[f"agent{i}"] = agent
        row[f"agent{i}_participant_id"] = who.get("participant_id")
        row[f"agent{i}_session_id"] = who.get("session_id")
        row[f"agent{i}_bot"] = _policy(payload) if is_bot else _policy(start.get("bot")) if agent in bot_from else None
        row[f"agent{i}_bot_from_f"] = 1 if is_bot else bot_from.get(agent)
        row[f"agent{i}_filled"] = sum(agent in (frame.get("filled") or []) for frame in summary.frames)
    return row


def frame_rows(summary: MatchRecords, checked: Checked) -> Iterator[dict[str, Any]]:
    """One row per frame and agent: the action the server sequenced (a bot's: the one the replay chose, when
    the check ran), whether the server filled it, and whether a bot played it."""
    agents = list((summary.start or {}).get("agents") or {})
    for frame in summary.frames:
        f, actions, filled = frame["f"], frame["actions"], frame.get("filled") or []
        chosen = checked.bot_actions.get(f, {})
        for agent in agents or list(actions):
            yield {
                "match_id": summary.match_id,
                "f": f,
                "agent": agent,
                "action": actions[agent] if agent in actions else chosen.get(agent),
                "filled": agent in filled,
                "bot": agent not in actions,
                "t": frame.get("t"),
                "wall": frame.get("wall"),
            }


def export(data_dir: Path, fmt: str, output: Path, study: StudySource | None = None) -> dict[str, int]:
    """Write the `events`, `participants`, `steps`, `matches` and `frames` tables to `output`; returns the row
    counts. With the study (`--experiment`), each match is replayed in CPython to check its state hashes."""
    files = session_files(data_dir)
    output.mkdir(parents=True, exist_ok=True)
    counts = {"participants": 0, "events": 0, "steps": 0, "matches": 0, "frames": 0}
    rules = scene_rules(study.experiment if study is not None else None)
    match_rows: list[dict[str, Any]] = []
    seeds: dict[str, list[int]] = {}
    with _Table(output / f"frames.{fmt}", FRAME_COLUMNS) as framed:
        for path in match_files(data_dir):
            summary = read_match(path.stem, read_records(path))
            checked = check(summary, study.directory if study is not None else None, rules)
            for row in frame_rows(summary, checked):
                framed.write(row)
                counts["frames"] += 1
            match_rows.append(match_row(summary, checked, torn_bytes(path)))
            seeds[path.stem] = list((summary.start or {}).get("seeds") or [])
    most = max((sum(1 for k in row if k.startswith("agent") and k[5:].isdigit()) for row in match_rows), default=0)
    with _Table(output / f"matches.{fmt}", MATCH_COLUMNS + agent_columns(most)) as played_matches:
        for row in match_rows:
            played_matches.write(row)
            counts["matches"] += 1
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
            for row in steps(path.stem, records, seeds):
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
        prog="python -m server export", description="Write a data directory's sessions and matches as tidy tables."
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="the server's data directory (default: %(default)s)"
    )
    parser.add_argument("--format", choices=("jsonl", "csv"), default="csv", help="table format (default: %(default)s)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="directory for the tables: events, participants, steps, matches, frames (default: DATA_DIR/export)",
    )
    parser.add_argument(
        "--experiment",
        default=None,
        help="the study the data came from (path/to/study.py[:name] or a module), whose folder holds its game "
        "modules: each multiplayer match is then replayed in CPython and its state hashes checked (replay_check)",
    )
    args = parser.parse_args(list(argv))
    output = args.output or args.data_dir / "export"
    try:
        study = load_study(args.experiment) if args.experiment else None
        counts = export(args.data_dir, args.format, output, study)
    except (ExportError, ExperimentError) as exc:
        print(f"python -m server export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"python -m server export: error: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return 2
    names = ("participants", "events", "steps", "matches", "frames")
    print(
        ", ".join(f"{counts[name]} {name}" for name in names)
        + " → "
        + ", ".join(str(output / f"{name}.{args.format}") for name in names)
    )
    return 0
