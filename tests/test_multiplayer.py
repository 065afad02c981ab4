"""Multiplayer through the real app on a real socket: simulated players (client/lockstep.py) matched and playing
in lockstep, the canonical match log, forged inputs, the waiting room's timeouts and partners who drop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from client.participant import ProtocolClient, walk
from client.runner import replay
from client.trace import groups as trace_groups
from client.trace import load
from server.agents import Human
from server.examples.partners import study as partners_study
from server.experiment import EndScene, Experiment, GymScene, StartScene
from server.export import export
from server.loader import StudySource
from server.multiplayer import Latency, Multiplayer
from server.store import read_records
from tests.support import HELLO, READY, SCREENING, run_locust

KEYS = {"ArrowLeft": 0, "ArrowRight": 1, "ArrowUp": 2}
STUDY_FILE = Path(partners_study.__file__)  # its folder holds coop_env, the module the game names
FPS = 20


def study(players: int = 2, **rules) -> Experiment:
    agents = {f"chef_{i}": Human(keys=KEYS, default_action=4) for i in range(players)}
    scene = GymScene(
        "coop",
        environment="coop_env:make",
        agents=agents,
        fps=FPS,
        multiplayer=Multiplayer(
            **{"wait_timeout_s": 5, "reconnect_timeout_s": 1.0, "input_delay": 2, "hash_every": 5, **rules}
        ),
    )
    return Experiment("mp", [StartScene(), scene, EndScene(completion_code="DONE")])


def configured(players: int = 2, **rules):
    return pytest.mark.config(experiment=study(players, **rules), experiment_file=STUDY_FILE)


def log_of(config, match_id: str) -> list[dict]:
    return list(read_records(config.data_dir / "matches" / f"{match_id}.msgpack"))


def frames_in(log: list[dict]) -> list[int]:
    return [r["f"] for r in log if r["kind"] == "frame"]


async def group(ws_url: str, n: int = 2, **kwargs) -> list[dict]:
    """n walks at once, each with its own per-player options (lists are taken one per player)."""

    def mine(i: int) -> dict:
        return {k: (v[i] if isinstance(v, list) else v) for k, v in kwargs.items()}

    return list(await asyncio.gather(*(walk(ws_url, timeout=10, **mine(i)) for i in range(n))))


def applied(end: dict) -> list[int]:
    """The frames a player applied, in order: each once, none missing."""
    frames = end["match"]["frames"]
    seen: list[int] = []
    for frame in frames:
        if frame["f"] == len(seen) + 1:
            seen.append(frame["f"])
    return seen


@configured()
@pytest.mark.gen_test(timeout=30)
async def test_two_players_are_matched_play_the_same_frames_and_the_log_holds_each_once(ws_url, config, tmp_path):
    a, b = await group(ws_url, frames=30)
    assert a["outcome"] == b["outcome"] == "completed" and a["completion_code"] == "DONE"
    ma, mb = a["match"], b["match"]
    assert ma["match_id"] == mb["match_id"] and {ma["agent"], mb["agent"]} == {"chef_0", "chef_1"}
    assert ma["frames"][:30] == mb["frames"][:30] and [m["f"] for m in ma["frames"][:30]] == list(range(1, 31))
    assert ma["hashes"] == mb["hashes"] and sorted(ma["hashes"]) == [5, 10, 15, 20, 25, 30]
    assert ma["doubled"] == mb["doubled"] == 0 and ma["reported"] == mb["reported"] == 30
    log = log_of(config, ma["match_id"])
    closed = frames_in(log)
    assert closed == list(range(1, len(closed) + 1)) and len(closed) >= 30
    by_f = {r["f"]: r for r in log if r["kind"] == "frame"}
    assert all(by_f[m["f"]]["actions"] == m["actions"] for m in ma["frames"])
    assert [r["outcome"] for r in log if r["kind"] == "end"] == ["completed"]
    export(config.data_dir, "jsonl", tmp_path / "out", StudySource(config.experiment, STUDY_FILE.resolve()))
    [match] = [json.loads(line) for line in (tmp_path / "out" / "matches.jsonl").read_text().splitlines()]
    assert match["hashes"] == 12  # the walks' hashes of actions: compared with each other, not with the game's
    assert match["replay_check"].startswith("not run: its hashes came from simulated players")


@configured()
@pytest.mark.gen_test(timeout=30)
async def test_forged_inputs_are_refused_with_a_code_and_change_nothing(connect, config):
    clients: list[ProtocolClient] = []
    for _ in range(2):
        client = await connect()
        for message in (HELLO, SCREENING, READY, {"type": "advance"}):
            await client.send(message)
        clients.append(client)
    a = clients[0]
    matched = [await c.until_type("match") for c in clients]
    for client, m in zip(clients, matched, strict=True):
        await client.send({"type": "match_ready", "match_id": m["match_id"]})
    await a.until_type("frame")
    frame = await a.until_type("frame")  # a frame or two closed: frame 1 is certainly closed
    f = frame["f"]
    other = matched[1]["agent"]
    forged = [
        ({"type": "input", "f": f + 2, "action": 1, "agent": other}, "not_your_agent"),
        ({"type": "input", "f": 1, "action": 1}, "frame_closed"),
        ({"type": "input", "f": f + 10_000, "action": 1}, "frame_ahead"),
        ({"type": "input", "f": f + 2, "action": 99}, "bad_message"),
    ]
    for message, code in forged:
        await a.send(message)
        error = await a.until_type("error")
        assert error["code"] == code, (message, error)
    for _ in range(config.max_refusals + 5):  # a page far behind its match: every input late, never closed for it
        await a.send({"type": "input", "f": 1, "action": 1})
    late = 0
    while late < config.max_refusals + 5:
        message = await a.recv()
        assert message is not None, f"closed after {late} late inputs: {a.conn.close_code} {a.conn.close_reason}"
        late += message["type"] == "error" and message["code"] == "frame_closed"
    seen = await a.recv_until(lambda m: m["type"] == "frame" and m["f"] > f + 6)
    assert a.conn.close_code is None  # the socket stays open
    log = log_of_open(config, matched[0]["match_id"])
    ours = [r for r in log if r["kind"] == "frame" and r["f"] > f]
    assert ours and all(r["actions"][matched[0]["agent"]] == 4 and r["actions"][other] == 4 for r in ours)
    assert all(m["actions"][other] == 4 for m in seen if m["type"] == "frame")


def log_of_open(config, match_id: str) -> list[dict]:
    """The canonical log of a match still in progress: the records written so far."""
    return log_of(config, match_id)


@pytest.mark.parametrize(
    "on_no_match, outcome",
    [
        pytest.param("skip", "completed", marks=configured(on_no_match="skip", wait_timeout_s=0.3)),
        pytest.param("bot", "completed", marks=configured(on_no_match="bot", wait_timeout_s=0.3)),
        pytest.param("end", "unmatched", marks=configured(on_no_match="end", wait_timeout_s=0.3, end_code="NOPAIR")),
    ],
)
@pytest.mark.gen_test(timeout=30)
async def test_the_wait_times_out_as_the_scene_says(ws_url, on_no_match, outcome):
    end = await walk(ws_url, frames=10, timeout=10)
    assert end["outcome"] == outcome
    if on_no_match == "skip":
        assert "match" not in end and end["completion_code"] == "DONE"
    elif on_no_match == "bot":
        assert end["match"]["bots"] == ["chef_1"] and end["match"]["applied"] == 10
    else:
        assert end["completion_code"] == "NOPAIR" and "match" not in end


@configured(on_no_match="end", wait_timeout_s=1.5, end_code="NOPAIR")
@pytest.mark.gen_test(timeout=30)
async def test_a_walk_waits_out_a_silent_waiting_room_longer_than_its_read_timeout(ws_url):
    end = await walk(ws_url, timeout=0.5)  # the room says nothing for 1.5 s: its deadline, not 0.5 s, is the bound
    assert end["outcome"] == "unmatched" and end["completion_code"] == "NOPAIR"


@configured(players=3)
@pytest.mark.gen_test(timeout=30)
async def test_three_players_form_one_group(ws_url):
    ends = await group(ws_url, 3, frames=15)
    assert {e["outcome"] for e in ends} == {"completed"}
    assert len({e["match"]["match_id"] for e in ends}) == 1
    assert {e["match"]["agent"] for e in ends} == {"chef_0", "chef_1", "chef_2"}
    assert ends[0]["match"]["frames"][:15] == ends[1]["match"]["frames"][:15] == ends[2]["match"]["frames"][:15]


@configured(matchmaker=Latency(max_rtt_ms=0.001), wait_timeout_s=1.0, on_no_match="skip")
@pytest.mark.gen_test(timeout=30)
async def test_the_latency_matchmaker_refuses_a_pair_over_its_limit(ws_url):
    ends = await group(ws_url, frames=10)  # any measured round trip is over 1 µs: nobody is paired
    assert [e["outcome"] for e in ends] == ["completed", "completed"]
    assert all("match" not in e for e in ends)


@configured(reconnect_timeout_s=5.0)
@pytest.mark.gen_test(timeout=30)
async def test_a_player_dropped_mid_match_resumes_and_nothing_is_lost_or_doubled(ws_url, config):
    a, b = await group(ws_url, frames=40, drop_at_frame=[None, 12], away=[0.0, 0.5])
    assert a["outcome"] == b["outcome"] == "completed"
    assert applied(a)[:40] == applied(b)[:40] == list(range(1, 41))
    for end in (a, b):
        assert end["match"]["doubled"] == 0 and end["match"]["reported"] == 40
        numbers = [m["f"] for m in end["match"]["frames"]]
        assert numbers == list(range(1, len(numbers) + 1))
    assert [e["status"] for e in a["events"] if e["type"] == "partner_status"] == ["reconnecting", "connected"]
    assert a["match"]["hashes"] == b["match"]["hashes"]
    log = log_of(config, a["match"]["match_id"])
    assert frames_in(log)[:40] == list(range(1, 41)) and [r["outcome"] for r in log if r["kind"] == "end"] == [
        "completed"
    ]


@pytest.mark.parametrize(
    "loss",
    [
        pytest.param("bot", marks=configured(on_partner_loss="bot")),
        pytest.param("end_scene", marks=configured(on_partner_loss="end_scene")),
        pytest.param("end", marks=configured(on_partner_loss="end", end_code="LOST")),
    ],
)
@pytest.mark.gen_test(timeout=30)
async def test_a_partner_who_never_returns(ws_url, config, loss):
    a, b = await group(ws_url, frames=30, drop_at_frame=[None, 8], away=[0.0, None])
    assert b["outcome"] == "gone"
    statuses = [e["status"] for e in a["events"] if e["type"] == "partner_status"]
    match = a["match"]
    log = log_of(config, match["match_id"])
    if loss == "bot":
        assert statuses == ["reconnecting", "bot"] and a["outcome"] == "completed"
        assert match["bots"] == [b["match"]["agent"]] and match["reported"] == 30
    elif loss == "end_scene":
        assert statuses == ["reconnecting", "left"] and match["outcome"] == "partner_left"
        assert a["outcome"] == "completed" and a["completion_code"] == "DONE"  # the other went on to the end
    else:
        assert statuses == ["reconnecting", "left"] and match["outcome"] == "partner_left"
        assert a["outcome"] == "partner_lost" and a["completion_code"] == "LOST"
    assert frames_in(log) == list(range(1, len(frames_in(log)) + 1))


@configured()
@pytest.mark.gen_test(timeout=30)
async def test_a_forced_desync_ends_the_match(ws_url, config):
    a, b = await group(ws_url, frames=30, salt=["", "other"])
    assert a["match"]["outcome"] == b["match"]["outcome"] == "desync"
    assert a["match"]["applied"] == b["match"]["applied"] == 5  # the first hash differs; the match ends there
    assert a["outcome"] == b["outcome"] == "completed"
    log = log_of(config, a["match"]["match_id"])
    assert [r["f"] for r in log if r["kind"] == "desync"] == [5]


@configured()
@pytest.mark.gen_test(timeout=60)
async def test_recorded_matches_are_replayed_as_groups_that_play_their_recorded_frames(ws_url, config):
    await group(ws_url, frames=20)
    traces = load([config.data_dir])
    assert trace_groups(traces) == [[0, 1]] and all(t.matches[0].frames == 20 for t in traces)
    assert {t.matches[0].match_id for t in traces} == {traces[0].group[0]} and traces[0].group[1] == 2
    assert not any(s.label in ("input", "match_ready", "state_hash") for t in traces for s in t.steps)
    collector, _ = await replay(traces, ws_url, sessions=3, concurrency=1, speed=0, ramp=0, max_seconds=60, timeout=10)
    report = collector.report(1.0)
    assert report["sessions"]["ok"] == 4, report  # whole groups: 3 sessions asked, 2 groups of 2 replayed
    ends = [r for path in (config.data_dir / "matches").glob("*.msgpack") for r in read_records(path)]
    outcomes = [r["outcome"] for r in ends if r["kind"] == "end"]
    reports = [r["frames"] for r in ends if r["kind"] == "report"]
    assert outcomes == ["completed"] * 3 and reports == [20] * 6


@pytest.mark.gen_test(timeout=120)
async def test_locust_users_replay_a_recorded_match_as_a_group(tmp_path):
    import subprocess
    import sys

    from client.harness import ROOT, served

    experiment = ["--experiment", str(ROOT / "bench" / "multiplayer_experiment.py")]
    with served(tmp_path / "recorded", *experiment) as url:  # a pair recorded with the command line
        walk_cli = ["-m", "client", "walk", "--url", url.replace("http", "ws") + "ws", "--count", "2"]
        walked = subprocess.run(
            [sys.executable, *walk_cli, "--together", "2", "--frames", "10"], cwd=ROOT, capture_output=True, text=True
        )
    assert walked.returncode == 0 and "2 participants: completed 2" in walked.stdout, walked.stderr
    with served(tmp_path / "replayed", *experiment) as url:
        master, rows = run_locust(
            tmp_path / "recorded",
            url.replace("http", "ws") + "ws",
            tmp_path,
            users=2,
            run_time="6s",
            extra=("--reply-timeout", "10"),
        )
    assert master.returncode == 0, master.stdout + master.stderr
    assert int(rows[("session", "ok")]["Request Count"]) >= 2, rows
    assert all(int(r["Failure Count"]) == 0 for r in rows.values()), (tmp_path / "locust_failures.csv").read_text()
    logs = [list(read_records(p)) for p in (tmp_path / "replayed" / "matches").glob("*.msgpack")]
    assert logs and all(sum(r["kind"] == "match" for r in log) == 1 for log in logs)
    outcomes = [r["outcome"] for log in logs for r in log if r["kind"] == "end"]  # the last may be cut off by the stop
    assert outcomes.count("completed") >= 1 and set(outcomes) == {"completed"}
