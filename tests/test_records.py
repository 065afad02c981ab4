"""One pass over a session's records: what the admin view, the export and the traces all read."""

from __future__ import annotations

from server.records import read_session


def record(kind: str, t: float, **fields) -> dict:
    return {"kind": kind, "t": t, "wall": 1e9 + t, **fields}


RECORDS = [
    {"kind": "frame", "dir": "in", "t": 10.0, "wall": 1e9 + 10.0, "message": {"type": "hello"}},
    record(
        "begin", 10.1, participant_id="p", params={"STUDY_ID": "s"}, seed=7, order=["start", "end"], user_agent="UA"
    ),
    {"kind": "frame", "dir": "out", "t": 10.1, "wall": 1e9 + 10.1, "message": {"type": "experiment_config"}},
    record("scene", 10.1, scene_id="start", scene_type="start", index=0),
    record("transition", 10.1, event="hello", source="connected", dest="preflight.screening.checking"),
    record("screening", 10.5, facts={}, rtt_ms=None, verdict=["timeout"]),
    record("screening", 10.6, facts={"webassembly": True}, rtt_ms=3.0, verdict=[]),
    record("preload", 11.0, status="loading", stage="runtime", elapsed_ms=5),
    record("preload", 12.0, status="ready", elapsed_ms=900),
    record("transition", 12.0, event="settle", source="preflight", dest="ready"),
    record("game_event", 13.0, scene_id="start", data={"step": 1}),
    record("transition", 14.0, event="advance", source="ready", dest="ready"),
]


def test_one_pass_keeps_who_the_path_the_last_screening_and_every_preload_report():
    summary = read_session("0123456789abcdef", RECORDS)
    assert summary.count == len(RECORDS) and summary.begin is not None and summary.begin.participant_id == "p"
    assert [(s.event, s.dest) for s in summary.path] == [
        ("hello", "preflight.screening.checking"),
        ("settle", "ready"),
        ("advance", "ready"),
    ]
    assert summary.screening is not None and summary.screening.verdict == [] and summary.screening.rtt_ms == 3.0
    assert [p.report for p in summary.preload] == [
        {"status": "loading", "stage": "runtime", "elapsed_ms": 5},
        {"status": "ready", "elapsed_ms": 900},
    ]
    assert [s.scene_id for s in summary.scenes_shown] == ["start"] and summary.game_events == 1
    assert [f["dir"] for f in summary.frames] == ["in", "out"] and (summary.frames_in, summary.frames_out) == (1, 1)
    assert summary.time_to_ready_s == 2.0 and summary.duration_s == 4.0
    assert (summary.first_wall, summary.last_wall) == (1e9 + 10.0, 1e9 + 14.0)


def test_a_session_not_closed_yet_is_unfinished_unless_it_reached_a_final_state():
    assert read_session("a", RECORDS).outcome == "unfinished" and read_session("a", RECORDS).closed is None
    done = [*RECORDS, record("transition", 15.0, event="advance", source="ready", dest="completed")]
    assert read_session("a", done).outcome == "completed"
    closed = [*done, record("closed", 16.0, outcome="abandoned", state="completed")]
    assert read_session("a", closed).outcome == "abandoned"
    nothing = read_session("a", [])
    assert (nothing.final_state, nothing.outcome, nothing.duration_s, nothing.time_to_ready_s) == (
        "connected",
        "unfinished",
        None,
        None,
    )
