"""Recording, export and replay as a researcher and a load tester type them, against `python -m server`."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from client.harness import ONE_ADDRESS_IS_MANY, ROOT, served, server_process
from client.runner import replay
from client.trace import Expect, load
from server.store import read_records
from tests.support import run_locust


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def ws(url: str) -> str:
    return url.replace("http", "ws") + "ws"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Three participants walked with `python -m client walk --count` against a served example."""
    data = tmp_path_factory.mktemp("recorded") / "data"
    with served(data) as url:
        walked = run("-m", "client", "walk", "--url", ws(url), "--count", "3", "--participant-id", "pilot")
    assert walked.returncode == 0 and "3 participants: completed 3" in walked.stdout, walked.stderr
    return data


def test_export_writes_tidy_tables_in_both_formats(recorded, tmp_path):
    out = run("-m", "server", "export", "--data-dir", str(recorded), "--format", "csv", "--output", str(tmp_path / "c"))
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "c" / "participants.csv") as f:
        people = list(csv.DictReader(f))
    assert sorted(p["participant_id"] for p in people) == ["pilot-1", "pilot-2", "pilot-3"]
    for p in people:
        assert p["outcome"] == "completed" and p["screening_verdict"] == "passed" and p["preload_status"] == "ready"
        assert json.loads(p["scene_order"]) == ["start", "instructions", "gridworld", "end"] and p["seed"]
        assert float(p["time_to_ready_s"]) > 0 and int(p["steps"]) == 5 and p["torn_bytes"] == "0"
    out = run(
        "-m", "server", "export", "--data-dir", str(recorded), "--format", "jsonl", "--output", str(tmp_path / "j")
    )
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in (tmp_path / "j" / "events.jsonl").read_text().splitlines()]
    total = sum(len(list(read_records(f))) for f in (recorded / "sessions").glob("*.msgpack"))
    assert len(events) == total
    hellos = [e for e in events if e["kind"] == "frame" and e["type"] == "hello"]
    assert len(hellos) == 3 and all(e["dir"] == "in" and e["participant_id"].startswith("pilot") for e in hellos)
    assert {e["kind"] for e in events} >= {
        "frame",
        "begin",
        "screening",
        "preload",
        "scene",
        "transition",
        "steps",
        "game_over",
    }


def test_export_names_a_missing_or_empty_data_dir(tmp_path):
    missing = run("-m", "server", "export", "--data-dir", str(tmp_path / "nope"))
    assert (
        missing.returncode == 2 and "data directory not found" in missing.stderr and "Traceback" not in missing.stderr
    )
    empty = run("-m", "server", "export", "--data-dir", str(tmp_path))
    assert empty.returncode == 2 and "no sessions in" in empty.stderr
    bad = run("-m", "server", "export", "--data-dir", str(tmp_path), "--format", "xlsx")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_replay_writes_the_report_and_thresholds_set_the_exit_code(recorded, tmp_path):
    report = tmp_path / "out" / "report.json"
    with served(tmp_path / "replayed") as url:
        ok = run(
            "-m",
            "client",
            "replay",
            str(recorded),
            "--url",
            ws(url),
            "--sessions",
            "20",
            "--concurrency",
            "10",
            "--speed",
            "0",
            "--ramp",
            "200",
            "--max-seconds",
            "60",
            "--report",
            str(report),
            "--fail-on",
            "errors>0",
        )
        strict = run(
            "-m",
            "client",
            "replay",
            str(recorded / "sessions"),
            "--url",
            ws(url),
            "--sessions",
            "2",
            "--speed",
            "0",
            "--fail-on",
            "p50>0ms",
            "--no-progress",
        )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "sessions: ok 20, diverged 0, failed 0" in ok.stdout and "latency_ms" in ok.stdout
    data = json.loads(report.read_text())
    assert data["sessions"]["ok"] == 20 and data["messages"]["sent"] > 20 * 9  # 9 recorded each, plus acks
    assert data["latency_ms"]["hello"]["count"] == 20 and data["thresholds"]["crossed"] == []
    with open(report.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["name"] for r in rows} >= {"all", "hello", "screening", "preload", "advance", "game_over", "connect"}
    assert strict.returncode == 1 and "threshold crossed: p50>0ms" in strict.stderr


def test_replay_names_bad_input(tmp_path):
    missing = run("-m", "client", "replay", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "trace not found" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run("-m", "client", "replay", str(tmp_path / "empty"))
    assert empty.returncode == 2 and f"no session files (*.msgpack) in {tmp_path / 'empty'}" in empty.stderr
    bad = run("-m", "client", "replay", str(tmp_path), "--fail-on", "p99 above 2")
    assert bad.returncode == 2 and "cannot read threshold" in bad.stderr and "Traceback" not in bad.stderr
    speed = run("-m", "client", "replay", str(tmp_path), "--speed", "-1")
    assert speed.returncode == 2 and "--speed: must be a number of 0 or more, got '-1'" in speed.stderr
    nan = run("-m", "client", "replay", str(tmp_path), "--timeout", "nan")
    assert nan.returncode == 2 and "--timeout: must be a number of 0 or more, got 'nan'" in nan.stderr
    (tmp_path / "notes.txt").write_text("# not a recording\n")
    text = run("-m", "client", "replay", str(tmp_path / "notes.txt"))
    assert text.returncode == 2 and "Traceback" not in text.stderr
    assert f"no recorded session in {tmp_path / 'notes.txt'}: none of its 1 file(s)" in text.stderr
    url = run("-m", "client", "replay", str(tmp_path / "notes.txt"), "--url", "http://127.0.0.1:8888/ws")
    assert url.returncode == 2 and "--url: must be a ws:// or wss:// URL" in url.stderr
    locust = [str(ROOT / "client" / "locustfile.py"), "--traces", str(tmp_path / "empty"), "--headless"]
    locust += ["--users", "2", "--run-time", "30s", "--host", "ws://127.0.0.1:9/ws", "--only-summary"]
    swarm = run("-m", "locust", "-f", *locust)  # ends at once, not after its run time of users failing
    assert swarm.returncode == 2 and "Traceback" not in swarm.stderr
    assert f"--traces: no session files (*.msgpack) in {tmp_path / 'empty'}" in swarm.stderr


def test_replay_names_files_it_leaves_out_or_finds_torn_and_counts_sessions_it_never_started(recorded, tmp_path):
    traces = tmp_path / "traces"
    traces.mkdir()
    whole, cut = sorted((recorded / "sessions").glob("*.msgpack"))[:2]
    (traces / whole.name).write_bytes(whole.read_bytes())
    (traces / cut.name).write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a write cut short
    (traces / "notes.msgpack").write_bytes(b"# not a recording")
    with socket.socket() as unused:  # never listening: nothing is started before --max-seconds ends the run
        unused.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{unused.getsockname()[1]}/ws"
        nothing = run("-m", "client", "replay", str(traces), "--url", url, "--max-seconds", "0", "--no-progress",
                      "--fail-on", "errors>0")  # fmt: skip
        no_report = run("-m", "client", "replay", str(traces), "--url", url, "--report", str(traces))
    assert f"note: {traces / 'notes.msgpack'}: left out, it holds no message a participant sent" in nothing.stderr
    assert f"note: {traces / cut.name}: " in nothing.stderr and "bytes belong to no whole record" in nothing.stderr
    assert f"{traces / whole.name}" not in nothing.stderr
    assert "not started 2 of 2" in nothing.stdout
    assert nothing.returncode == 1 and "threshold crossed: errors" in nothing.stderr
    assert no_report.returncode == 2 and f"cannot write the report to {traces}: it is a directory" in no_report.stderr
    assert "sessions:" not in no_report.stdout  # refused before the run, not after it


def test_ctrl_c_ends_a_replay_with_the_report_of_what_ran(recorded, tmp_path):
    data = tmp_path / "data"
    with served(data) as url:
        command = [sys.executable, "-m", "client", "replay", str(recorded), "--url", ws(url), "--speed", "0.001"]
        replaying = subprocess.Popen(
            [*command, "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(300):  # until the first replayed participant has said hello (a recorded walk, 1000x slower)
            if list((data / "sessions").glob("*.msgpack")):
                break
            time.sleep(0.1)
        replaying.send_signal(signal.SIGINT)
        out, err = (text.decode() for text in replaying.communicate(timeout=30))
    assert replaying.returncode == 130 and "Traceback" not in err
    assert "unfinished" in out and "of 3 in" in out and "latency_ms" in out
    assert "interrupted; the figures are of what ran until then" in err


def test_a_different_experiment_shows_up_as_divergences(recorded, tmp_path):
    plain = tmp_path / "plain.py"
    plain.write_text(
        "from server.experiment import *\n"
        "experiment = Experiment('plain', [StartScene(), StaticScene('x', html='x'), EndScene(completion_code='P')])\n"
    )
    with served(tmp_path / "other", "--experiment", str(plain)) as url:
        out = run(
            "-m",
            "client",
            "replay",
            str(recorded),
            "--url",
            ws(url),
            "--speed",
            "0",
            "--timeout",
            "2",
            "--no-progress",
            "--fail-on",
            "errors>0",
        )
    assert out.returncode == 1 and "sessions: ok 0, diverged 3" in out.stdout
    assert "divergences: different_experiment 3" in out.stdout, out.stdout
    assert "recorded with experiment 'gridworld-example'; the server runs 'plain'" in out.stdout


def test_kill_9_during_a_replay_loses_nothing_a_participant_received(recorded, tmp_path):
    data = tmp_path / "data"
    traces = load([recorded])
    sessions = []
    ok = []

    def on_done(collector, session) -> None:
        sessions.append(session)
        ok.extend([session] if session.status == "ok" else [])
        # Counted by outcome, so a loaded machine's slow sessions cannot keep ok below it; past the first wave of
        # 40 (which may all end together), so that the kill lands while the next sessions are under way.
        if len(ok) == 60:
            os.kill(proc.pid, signal.SIGKILL)

    with server_process(data) as (url, proc):
        collector, _ = asyncio.run(
            replay(
                traces,
                ws(url),
                sessions=400,
                concurrency=40,
                speed=0,
                ramp=0,
                max_seconds=180,
                timeout=30,
                on_done=on_done,
            )
        )
        assert len(ok) >= 60, f"the server was never killed: {collector.statuses}"
        assert proc.wait(timeout=10) == -signal.SIGKILL
    assert collector.statuses["ok"] >= 60 and collector.statuses["ok"] < 400
    assert collector.statuses["diverged"] + collector.statuses["failed"] > 0

    exported = run(
        "-m", "server", "export", "--data-dir", str(data), "--format", "jsonl", "--output", str(tmp_path / "x")
    )
    assert exported.returncode == 0, exported.stderr
    people = [json.loads(line) for line in (tmp_path / "x" / "participants.jsonl").read_text().splitlines()]
    files = list((data / "sessions").glob("*.msgpack"))
    assert len(people) == len(files) and {p["outcome"] for p in people} >= {"completed", "unfinished"}
    on_disk = {}
    for f in files:
        records = list(read_records(f))
        begin = [r for r in records if r["kind"] == "begin"]
        if begin:
            on_disk[begin[0]["participant_id"]] = [
                Expect.of(r["message"]) for r in records if r["kind"] == "frame" and r["dir"] == "out"
            ]
    received = [s for s in sessions if s.seen]
    assert len(received) >= 40
    for session in received:  # every message a participant got was recorded before it was sent
        assert on_disk[session.participant_id][: len(session.seen)] == session.seen


def test_locust_master_and_one_worker_replay_the_recording(recorded, tmp_path):
    # Three users at full speed start over 300 sessions a second, from one address, as docs/load-testing.md says.
    with served(tmp_path / "locust-data", *ONE_ADDRESS_IS_MANY) as url:
        master, rows = run_locust(recorded, ws(url), tmp_path, users=3, run_time="3s")
    assert master.returncode == 0, master.stdout + master.stderr
    assert int(rows[("session", "ok")]["Request Count"]) >= 1
    assert int(rows[("WS", "hello")]["Request Count"]) >= 1 and int(rows[("WS", "advance")]["Request Count"]) >= 3
    assert all(int(r["Failure Count"]) == 0 for r in rows.values())
