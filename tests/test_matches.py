"""Multiplayer on plain sessions: the waiting room, matchmakers and the lockstep match, no network, a hand clock."""

from __future__ import annotations

import pytest

from client.participant import DESKTOP_CHROMIUM
from server.agents import Bot, Human, RandomPolicy
from server.experiment import EndScene, Experiment, GymScene, StartScene
from server.matches import Lobby
from server.multiplayer import FIFO, Latency, Multiplayer, Reunion, Waiter
from server.session import Session, Timeouts
from statemachine import Fired, SessionMachine
from statemachine.match import MATCH_OUTCOMES, MATCH_STATES, MATCH_TRANSITIONS, MatchMachine
from tests.support import HELLO, READY, SCREENING, TimeClock, coop

KEYS = {"ArrowLeft": 0, "ArrowRight": 1}


@pytest.fixture
def clock():
    return TimeClock()


@pytest.fixture
def lobby(clock):
    logs: dict[str, list[dict]] = {}

    def open_log(match_id):
        return logs.setdefault(match_id, []).append

    lobby = Lobby(clock, open_log, MatchMachine())
    lobby.logs = logs
    return lobby


def participant(experiment, clock, lobby, rtt=20.0):
    sent: list[dict] = []
    ua = DESKTOP_CHROMIUM["user_agent"]
    session = Session(SessionMachine(), experiment, clock, sent.append, user_agent=ua, timeouts=Timeouts(), lobby=lobby)
    session.rtt_ms = rtt
    for message in (HELLO, SCREENING, READY):
        session.fire(message["type"], message)
    assert session.fire("advance", {"type": "advance"}) is Fired.ACCEPTED  # into the waiting room
    return session, sent


def of(sent, kind):
    return [m for m in sent if m["type"] == kind]


def playing(experiment, clock, lobby):
    """Two participants matched, both pages ready: the match is playing from frame 0."""
    (a, sent_a), (b, sent_b) = (participant(experiment, clock, lobby) for _ in range(2))
    clock.advance(0.01)
    for session in (a, b):
        session.fire("match_ready", {"type": "match_ready", "match_id": a.match.match_id})
    return (a, sent_a), (b, sent_b), a.match


def test_two_arrivals_are_matched_and_play_frames_the_server_closes(clock, lobby):
    experiment = coop()
    (a, sent_a), (b, sent_b) = (participant(experiment, clock, lobby) for _ in range(2))
    assert a.state == "waiting" and of(sent_a, "state")[-1]["waiting"]["needed"] == 2
    clock.advance(0.01)
    assert a.state == b.state == "in_game" and a.match is b.match
    match = a.match
    clock.advance(0.01)
    assert match.state == "starting"
    mine = of(sent_a, "match")[-1]
    assert mine["agent"] == "p0" and of(sent_b, "match")[-1]["agent"] == "p1" and mine["seeds"]
    for s in (a, b):
        s.fire("match_ready", {"type": "match_ready", "match_id": match.match_id})
    assert match.state == "playing"
    a.fire("input", {"type": "input", "f": 1, "action": 1})
    clock.advance(0.1)
    frames = of(sent_b, "frame")
    assert frames[0]["f"] == 1 and frames[0]["actions"] == {"p0": 1, "p1": 0} and frames[0]["filled"] == ["p1"]
    assert of(sent_a, "frame") == frames
    clock.advance(1.0)
    assert [m["f"] for m in of(sent_a, "frame")] == list(range(1, 12))
    log = lobby.logs[match.match_id]
    assert [r["f"] for r in log if r["kind"] == "frame"] == list(range(1, 12))


def test_a_stalled_tick_goes_on_at_the_matchs_pace_not_in_a_burst_of_filled_frames(clock, lobby):
    experiment = coop()
    (_a, _), (_b, _), match = playing(experiment, clock, lobby)
    clock.advance(0.5)
    before = match.f
    clock.now += 3.0  # the event loop held for 3 s: 30 ticks are overdue
    clock.advance(0.01)
    assert match.f == before + 1  # the late tick closes one frame, then the pace is the match's again
    clock.advance(0.1)
    assert match.f == before + 2
    slips = [r for r in lobby.logs[match.match_id] if r["kind"] == "slip"]
    assert len(slips) == 1 and slips[0]["behind_s"] > 2.5


def test_a_forged_or_late_input_is_refused_and_changes_nothing(clock, lobby):
    experiment = coop()
    (a, _), (b, _) = (participant(experiment, clock, lobby) for _ in range(2))
    clock.advance(0.01)
    for s in (a, b):
        s.fire("match_ready", {"type": "match_ready", "match_id": a.match.match_id})
    clock.advance(0.35)
    assert a.match.f == 3
    codes = [
        a.check({"type": "input", "f": 5, "action": 1, "agent": "p1"}).code,
        a.check({"type": "input", "f": 3, "action": 1}).code,
        a.check({"type": "input", "f": 400, "action": 1}).code,
        a.check({"type": "input", "f": 5, "action": 7}).code,
    ]
    assert codes == ["not_your_agent", "frame_closed", "frame_ahead", "bad_message"]
    assert a.check({"type": "input", "f": 5, "action": 1}) is None


@pytest.mark.parametrize("on_no_match, state", [("skip", "ready"), ("bot", "in_game"), ("end", "unmatched")])
def test_the_wait_times_out_on_the_server_as_the_scene_says(clock, lobby, on_no_match, state):
    a, sent = participant(coop(on_no_match=on_no_match, end_code="NOPARTNER"), clock, lobby)
    clock.advance(29.0)
    assert a.state == "waiting"
    clock.advance(1.5)
    assert a.state == state
    if on_no_match == "bot":
        clock.advance(0.01)
        match = a.match
        assert match.bots == {"p1"} and of(sent, "match")[-1]["agent"] == "p0"
    if on_no_match == "end":
        assert a.outcome == "unmatched" and of(sent, "activate_scene")[-1]["completion_code"] == "NOPARTNER"


def test_three_players_form_one_group(clock, lobby):
    experiment = coop(players=3)
    sessions = [participant(experiment, clock, lobby)[0] for _ in range(3)]
    clock.advance(0.01)
    assert {s.state for s in sessions} == {"in_game"} and len({id(s.match) for s in sessions}) == 1


def test_a_dropped_partner_pauses_the_match_and_resumes_it(clock, lobby):
    experiment = coop()
    (_a, sent_a), (b, sent_b), match = playing(experiment, clock, lobby)
    clock.advance(0.5)
    b.connection_lost()
    assert match.state == "paused" and of(sent_a, "partner_status")[-1]["status"] == "reconnecting"
    closed = match.f
    clock.advance(3.0)
    assert match.f == closed
    b.reconnect(sent_b.append, b.token, of(sent_b, "frame")[-1]["seq"])
    assert b.state == "in_game" and match.state == "playing"
    clock.advance(0.5)
    assert [m["f"] for m in of(sent_b, "frame")] == list(range(1, match.f + 1))


@pytest.mark.parametrize("loss, a_state", [("bot", "in_game"), ("end_scene", "ready"), ("end", "partner_lost")])
def test_a_partner_who_never_returns(clock, lobby, loss, a_state):
    experiment = coop(on_partner_loss=loss)
    (a, sent_a), (b, _), match = playing(experiment, clock, lobby)
    clock.advance(0.5)
    b.connection_lost()
    clock.advance(5.5)
    assert b.state == "abandoned"
    if loss == "bot":
        assert match.state == "playing" and match.bots == {"p1"}
        assert of(sent_a, "frame")[-1].get("bots") == ["p1"]
    else:
        assert match.state == "ended.partner_left" and of(sent_a, "match_end")[-1]["outcome"] == "partner_left"
        a.fire("game_over", {"type": "game_over", "steps": 0, "frames": match.f})
    assert a.state == a_state


def test_different_state_hashes_end_the_match_as_desync(clock, lobby):
    experiment = coop()
    (a, sent_a), (b, _), match = playing(experiment, clock, lobby)
    clock.advance(0.5)
    a.fire("state_hash", {"type": "state_hash", "f": 3, "hash": "aaaa"})
    b.fire("state_hash", {"type": "state_hash", "f": 3, "hash": "bbbb"})
    assert match.state == "ended.desync" and of(sent_a, "match_end")[-1]["outcome"] == "desync"
    assert any(r["kind"] == "desync" for r in lobby.logs[match.match_id])


def test_equal_game_over_reports_complete_the_match(clock, lobby):
    experiment = coop()
    (a, _), (b, _), match = playing(experiment, clock, lobby)
    clock.advance(1.0)
    a.fire("game_over", {"type": "game_over", "steps": 8, "frames": 8})
    clock.advance(1.0)
    assert match.f == 10  # frames already closed stay; no frame past the reported end is closed after it
    b.fire("game_over", {"type": "game_over", "steps": 8, "frames": 8})
    assert match.state == "ended.completed" and a.state == b.state == "ready"
    end = lobby.logs[match.match_id][-2 if lobby.logs[match.match_id][-1]["kind"] == "transition" else -1]
    assert end["kind"] in ("end", "transition")


def waiter(name, since, rtt=10.0, groups=None):
    return Waiter(name, name, since, rtt, groups or {})


def test_matchmakers():
    waiting = [waiter("c", 3), waiter("a", 1), waiter("b", 2)]
    assert [[w.session_id for w in g] for g in FIFO().groups(waiting, 2)] == [["a", "b"]]
    far = [waiter("a", 1, rtt=120), waiter("b", 2, rtt=90), waiter("c", 3, rtt=20)]
    assert [[w.session_id for w in g] for g in Latency(max_rtt_ms=150).groups(far, 2)] == [["a", "c"]]
    assert Latency(max_rtt_ms=100).groups(far[:2], 2) == []  # 120 + 90 ms: over the limit
    again = [waiter("a", 1, groups={"coop1": "m1"}), waiter("x", 2), waiter("b", 3, groups={"coop1": "m1"})]
    assert [[w.session_id for w in g] for g in Reunion("coop1", fallback=None).groups(again, 2)] == [["a", "b"]]


def test_the_match_table_is_complete():
    machine = MatchMachine()
    names = set(machine.get_nested_state_names())
    assert {f"ended.{o}" for o in MATCH_OUTCOMES} <= names
    assert {t["trigger"] for t in MATCH_TRANSITIONS} == set(machine.events)
    assert [s if isinstance(s, str) else s["name"] for s in MATCH_STATES][:4] == [
        "forming",
        "starting",
        "playing",
        "paused",
    ]


def test_multiplayer_scenes_are_checked_when_the_study_is_defined():
    with pytest.raises(ValueError, match="at least two Human agents"):
        GymScene("x", environment="e:make", agents={"a": Human(), "b": Bot(RandomPolicy())}, multiplayer=Multiplayer())
    with pytest.raises(ValueError, match="on_no_match"):
        Multiplayer(on_no_match="wait")
    with pytest.raises(ValueError, match="input_delay"):
        Multiplayer(input_delay=-1)


def test_a_player_back_after_a_restart_finds_the_match_gone_and_moves_on(clock, lobby):
    experiment = coop()
    (a, sent), _ = (participant(experiment, clock, lobby) for _ in range(2))
    clock.advance(0.01)
    a.connection_lost()
    a.match = None  # what a restart leaves: the session parked in its game, no match in memory
    a.reconnect(sent.append, a.token, 0)
    assert a.state == "ready" and a.fire("advance", {"type": "advance"}) is Fired.ACCEPTED
    assert a.outcome == "completed"


def test_the_input_delay_follows_the_slowest_round_trip(clock, lobby):
    experiment = coop()
    participant(experiment, clock, lobby, rtt=30.0)
    slow, sent = participant(experiment, clock, lobby, rtt=250.0)
    clock.advance(0.01)
    assert slow.match.delay == 4  # ceil(250 ms / 100 ms a frame) + 1
    assert of(sent, "match")[-1]["input_delay"] == 4


def test_a_turn_closes_when_every_human_has_moved_or_its_time_is_up(clock, lobby):
    agents = {f"p{i}": Human(keys=KEYS, default_action=0) for i in range(2)}
    scene = GymScene(
        "coop",
        environment="coop_env:make",
        agents=agents,
        input="turn",
        fps=10,
        multiplayer=Multiplayer(turn_timeout_s=10),
    )
    experiment = Experiment("turns", [StartScene(), scene, EndScene()])
    (a, _), (b, sent_b), match = playing(experiment, clock, lobby)
    a.fire("input", {"type": "input", "f": 1, "action": 1})
    clock.advance(5.0)
    assert match.f == 0  # p1 has not moved
    b.fire("input", {"type": "input", "f": 1, "action": 0})
    clock.advance(0.2)
    assert match.f == 1 and of(sent_b, "frame")[-1]["filled"] == []
    clock.advance(10.5)
    assert match.f == 2 and of(sent_b, "frame")[-1]["filled"] == ["p0", "p1"]


def test_a_reloaded_page_holds_the_match_until_it_has_rebuilt_the_game(clock, lobby):
    experiment = coop()
    (_a, _), (b, sent_b), match = playing(experiment, clock, lobby)
    clock.advance(0.5)
    b.connection_lost()
    closed = match.f
    b.outbox.ack(b.outbox.seq)  # the page had confirmed all it got
    b.reconnect(sent_b.append, b.token, 0)  # a reloaded page: everything again, the frames so far in `match`
    again = of(sent_b, "match")[-1]
    assert [frame["f"] for frame in again["frames"]] == list(range(1, closed + 1))
    clock.advance(2.0)
    assert match.state == "paused" and match.f == closed  # nobody's input is filled while the page rebuilds
    b.fire("match_ready", {"type": "match_ready", "match_id": match.match_id})
    assert match.state == "playing"


def test_every_player_at_the_game_hears_how_the_match_ended(clock, lobby):
    experiment = coop()
    (a, sent_a), (b, _), match = playing(experiment, clock, lobby)
    clock.advance(1.0)
    a.fire("game_over", {"type": "game_over", "steps": 8, "frames": 8})
    b.fire("game_over", {"type": "game_over", "steps": 8, "frames": 8})
    assert of(sent_a, "match_end")[-1] == {**of(sent_a, "match_end")[-1], "outcome": "completed", "frames": 8}
    assert a.groups == b.groups == {"coop": match.match_id}
