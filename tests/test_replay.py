"""The replay core and its pure modules, then replays of recorded walks against the real app."""

from __future__ import annotations

import pytest

from client import schedule, stats
from client.participant import walk
from client.replay import ReplaySession, Send, Wait, decode
from client.runner import replay
from client.trace import Expect, Step, Trace, from_records, load
from server import protocol
from server.store import read_records

HELLO, CONFIG = {"type": "hello"}, {"type": "experiment_config", "session_token": "t" * 32, "participant_id": "p"}
SCENE = {"type": "activate_scene", "scene_type": "start", "scene_id": "start"}


def state(name: str, **extra) -> dict:
    return {"type": "state", "state": name, "may_advance": False, **extra}


def recorded(*frames: tuple[str, float, object]) -> list[dict]:
    """Records as the server writes them: frames with their direction and time."""
    out = []
    for direction, t, message in frames:
        field = "message" if isinstance(message, dict) else "raw"
        out.append({"kind": "frame", "dir": direction, "t": t, "wall": 1e9 + t, field: message})
        out.append({"kind": "transition", "t": t})
    return out


TRACE = from_records(
    recorded(
        ("in", 10.0, {**HELLO, "participant_id": "orig", "params": {"PROLIFIC_PID": "orig", "STUDY_ID": "s"}}),
        ("out", 10.1, CONFIG),
        ("out", 10.1, SCENE),
        ("out", 10.1, state("preflight")),
        ("in", 12.0, {"type": "ack", "seq": 3}),
        ("in", 12.5, {"type": "advance"}),
        ("out", 12.5, {"type": "error", "code": "gated", "state": "preflight"}),
        ("in", 13.0, b"\xc1"),
        ("out", 13.0, {"type": "error", "code": "bad_message", "state": "preflight"}),
        ("in", 14.0, {"type": "game_event", "step": 1}),
    ),
    source="canned",
)


def test_a_trace_is_the_client_side_with_what_each_message_waited_for():
    assert [s.label for s in TRACE.steps] == ["hello", "advance", "raw", "game_event"]  # recorded acks are not replayed
    assert [(s.offset, s.after, s.replies) for s in TRACE.steps] == [(0.0, 0, 3), (2.5, 3, 1), (3.0, 4, 1), (4.0, 5, 0)]
    assert TRACE.expected == (
        Expect("experiment_config", None),
        Expect("activate_scene", "start"),
        Expect("state", "preflight"),
        Expect("error", "gated"),
        Expect("error", "bad_message"),
    )
    echo = TRACE.as_echo()
    assert [(s.after, s.replies) for s in echo.steps] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert [e.type for e in echo.expected] == ["hello", "advance", "raw", "game_event"]


def play(session: ReplaySession, replies: list[list[dict | None]], clock: list[float]) -> list[bytes | str]:
    """Drive the core by hand: after each send, the next batch of replies arrives 5 ms later."""
    sent, batches = [], iter(replies)
    while (action := session.poll(clock[0])) is not None:
        if isinstance(action, Send):
            sent.append(action.frame)
            session.sent_frame(clock[0])
            if action.label != "ack":
                clock[0] += 0.005
                for message in next(batches, []):
                    session.received(message, clock[0])
        else:
            assert isinstance(action, Wait)
            clock[0] = max(clock[0], action.until)
    return sent


ON_TRACK = [
    [CONFIG, SCENE, state("preflight")],
    [{"type": "error", "code": "gated", "state": "preflight"}],
    [{"type": "error", "code": "bad_message", "state": "preflight"}],
    [],
]


def test_the_core_substitutes_ids_and_times_from_the_due_time():
    clock = [100.0]
    session = ReplaySession(TRACE, "fresh-1", start=100.0, speed=0)
    session.connected(100.0)
    sent = play(session, ON_TRACK, clock)
    assert session.status == "ok" and session.divergence is None
    hello = decode(sent[0])
    assert hello["participant_id"] == "fresh-1" and hello["params"] == {"PROLIFIC_PID": "fresh-1", "STUDY_ID": "s"}
    assert sent[2] == b"\xc1" and decode(sent[3]) == {"type": "game_event", "step": 1}
    assert [label for label, _ in session.latencies] == ["connect", "hello", "advance", "raw"]
    assert all(seconds == pytest.approx(0.005) for _, seconds in session.latencies[1:])
    assert session.sent_count == 4 and session.received_count == 5


def test_at_recorded_speed_latency_counts_from_when_a_message_was_due():
    session = ReplaySession(TRACE, "fresh-2", start=0.0, speed=2.0)
    session.connected(0.0)
    late = [[CONFIG, SCENE, state("preflight")]]
    session.poll(0.0)
    session.sent_frame(0.0)
    for message in late[0]:
        session.received(message, 3.0)  # the server stalled: the advance was due at 1.25 s
    action = session.poll(3.0)
    assert isinstance(action, Send) and action.label == "advance"
    session.sent_frame(3.0)
    session.received({"type": "error", "code": "gated", "state": "preflight"}, 3.01)
    assert session.latencies[-1] == ("advance", pytest.approx(3.01 - 1.25))
    assert session.lags[-1] == pytest.approx(0.0)  # the client itself was not late once the reply was there


MATCH = {
    "type": "match", "match_id": "0" * 16, "scene_id": "duo", "agent": "a", "input_delay": 1, "hash_every": 0,
    "agents": {"a": {"kind": "human", "keys": {"x": 1}, "default_action": 0}},
}  # fmt: skip
MATCH_TRACE = from_records(
    recorded(
        ("in", 0.0, HELLO),
        ("out", 0.1, CONFIG),
        ("out", 0.1, {**SCENE, "scene_type": "game"}),
        ("out", 0.1, state("in_game")),
        ("out", 0.2, MATCH),
        ("in", 0.3, {"type": "match_ready", "match_id": MATCH["match_id"]}),
        ("in", 0.3, {"type": "input", "f": 1, "action": 1}),
        ("out", 0.4, {"type": "frame", "f": 1, "actions": {"a": 1}}),
        ("in", 0.4, {"type": "input", "f": 2, "action": 1}),
        ("out", 5.0, {"type": "frame", "f": 2, "actions": {"a": 1}}),
        ("in", 5.0, {"type": "game_over", "frames": 2, "steps": 2}),
        ("out", 5.1, state("completed")),
    ),
    source="match",
)


def test_a_match_s_game_over_is_due_when_the_match_has_been_played_not_when_it_began():
    session = ReplaySession(MATCH_TRACE, "fresh-m", start=0.0, speed=0)
    session.connected(0.0)
    assert isinstance(session.poll(0.0), Send)  # hello
    session.sent_frame(0.0)
    for message in (CONFIG, {**SCENE, "scene_type": "game"}, state("in_game"), MATCH):
        session.received(message, 0.1)
    assert [session.poll(0.1).label for _ in range(2)] == ["match_ready", "input"]  # type: ignore[union-attr]
    session.received({"type": "frame", "f": 1, "actions": {"a": 1}}, 0.2)
    assert session.poll(0.2).label == "input"  # type: ignore[union-attr]
    assert isinstance(session.poll(0.2), Wait)  # the game over waits for the match's last frame
    session.received({"type": "frame", "f": 2, "actions": {"a": 1}}, 10.0)  # ten seconds of match later
    action = session.poll(10.0)
    assert isinstance(action, Send) and action.label == "game_over"
    session.sent_frame(10.0)
    session.received(state("completed"), 10.02)
    assert session.poll(10.02) is None and session.status == "ok"
    assert session.latencies[-1] == ("game_over", pytest.approx(0.02))  # not the match's ten seconds
    assert session.lags[-1] == pytest.approx(0.0)


def test_the_core_acknowledges_sequence_numbers_it_receives():
    session = ReplaySession(TRACE, "fresh-3", start=0.0, speed=0)
    session.connected(0.0)
    with_seq = [[{**m, "seq": i + 1} for i, m in enumerate(ON_TRACK[0])], *ON_TRACK[1:]]
    sent = play(session, with_seq, [0.0])
    assert session.status == "ok"
    assert decode(sent[1]) == {"type": "ack", "seq": 3}


@pytest.mark.parametrize(
    "replies, kind",
    [
        ([[CONFIG, SCENE, state("ready")]], "different_state"),
        ([[CONFIG, {**SCENE, "scene_type": "game"}]], "different_scene"),
        ([[CONFIG, SCENE, state("preflight")], [{"type": "error", "code": "not_allowed", "state": "x"}]], "error"),
        ([[CONFIG, SCENE, state("preflight")], [state("ready")]], "unexpected"),
        ([[CONFIG, SCENE, {"type": "error", "code": "gated", "state": "preflight"}]], "gated"),
        ([[CONFIG, None]], "disconnect"),
        ([[CONFIG]], "timeout"),
    ],
)
def test_divergences_are_classified(replies, kind):
    session = ReplaySession(TRACE, "fresh-4", start=0.0, speed=0, timeout=1.0)
    session.connected(0.0)
    play(session, replies, [0.0])
    assert session.status == "diverged" and session.divergence == kind and session.detail


def test_schedule_and_statistics():
    assert [(p.trace, p.offset) for p in schedule.plan(5, 2, ramp=2)] == [
        (0, 0),
        (1, 0.5),
        (0, 1.0),
        (1, 1.5),
        (0, 2.0),
    ]
    assert {p.offset for p in schedule.plan(3, 1, ramp=0)} == {0.0}
    assert schedule.due(10, 4, speed=2, ready_at=11) == 12 and schedule.due(10, 4, speed=0, ready_at=11) == 11
    assert stats.percentile(list(range(1, 101)), 99) == 99 and stats.percentile([5.0], 50) == 5.0
    s = stats.summary([0.001, 0.002, 0.003])
    assert s["count"] == 3 and s["p50"] == pytest.approx(2.0) and s["max"] == pytest.approx(3.0)
    t = stats.parse_thresholds("p99>200ms, errors>0,lag_p95>=1s")
    assert [(x.metric, x.op, x.value) for x in t] == [("p99", ">", 200), ("errors", ">", 0), ("lag_p95", ">=", 1000)]
    for bad in ("p99>>2", "latency>1", "errors>1ms"):
        with pytest.raises(ValueError, match="threshold"):
            stats.parse_thresholds(bad)


@pytest.mark.gen_test(timeout=60)
async def test_recorded_walks_replay_without_divergence(ws_url, config):
    for n in range(3):
        await walk(ws_url, participant_id=f"rec-{n}")
    traces = load([config.data_dir])
    assert len(traces) == 3 and all(t.steps[0].message["participant_id"].startswith("rec-") for t in traces)
    seen: list[ReplaySession] = []
    collector, duration = await replay(
        traces,
        ws_url,
        sessions=30,
        concurrency=10,
        speed=0,
        ramp=0,
        max_seconds=50,
        on_done=lambda c, s: seen.append(s),
    )
    report = collector.report(duration)
    assert report["sessions"]["ok"] == 30 and report["divergences"] == {}, report["divergence_examples"]
    assert report["latency_ms"]["advance"]["count"] == 30 * 3 and report["time_to_ready_ms"]["count"] == 30
    assert len({s.participant_id for s in seen}) == 30
    begun = {
        r["participant_id"]
        for f in (config.data_dir / "sessions").glob("*.msgpack")
        for r in read_records(f)
        if r["kind"] == "begin"
    }
    assert {s.participant_id for s in seen} <= begun


@pytest.mark.gen_test(timeout=30)
@pytest.mark.config(max_refusals=3)
async def test_a_server_that_answers_differently_is_a_divergence(ws_url, config):
    trace = Trace("forged", (Step(0.0, {"type": "advance"}, 0, 1),), (Expect("state", "ready"),))
    collector, _ = await replay([trace], ws_url, sessions=2, concurrency=2, speed=0, ramp=0, max_seconds=20)
    assert collector.statuses["diverged"] == 2 and collector.divergences == {"error": 2}
    assert "error not_allowed" in collector.examples["error"]
    unreachable = ws_url.replace(ws_url.split(":")[2].split("/")[0], "1")
    collector, _ = await replay([trace], unreachable, sessions=1, concurrency=1, speed=0, ramp=0, max_seconds=20)
    assert collector.statuses["failed"] == 1 and collector.divergences == {"connect": 1}


def test_frames_encode_as_the_protocol_does():
    assert decode(protocol.encode({"type": "state"})) == {"type": "state"}
    assert decode(b"\xc1") == {"type": "undecodable"} and decode("text") == {"type": "undecodable"}
