"""Match data: a match played on the real lobby and sessions (hand clock) into a real data directory, then
exported: the matches and frames tables, the participants' matches, and the replay check against the hashes the
simulated pages computed with `Team.state_hash` in CPython; a tampered frame is a mismatch."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

from client.participant import DESKTOP_CHROMIUM
from server.export import export, main
from server.game_contract import load_team
from server.loader import load_study
from server.matches import Lobby
from server.session import Session, Timeouts
from server.store import DataStore, framed, read_records
from statemachine import Fired, SessionMachine
from statemachine.match import MatchMachine
from tests.support import READY, SCREENING, TimeClock

ENV = '''
import random


class Space:
    n = 3


class Duo:
    """Two walkers on a ring; an even seed's episode ends after 4 steps, an odd one's runs into max_steps."""

    def __init__(self, size=7):
        self.size = size

    def action_space(self, agent):
        return Space()

    def reset(self, seed=None, options=None):
        rng = random.Random(seed)
        self.limit = 4 if seed % 2 == 0 else 99
        self.t = 0
        self.pos = {"p0": rng.randrange(self.size), "p1": rng.randrange(self.size)}
        return dict(self.pos), {}

    def step(self, actions):
        for agent, action in actions.items():
            self.pos[agent] = (self.pos[agent] + action - 1) % self.size
        self.t += 1
        meet = float(self.pos["p0"] == self.pos["p1"])
        done = self.t >= self.limit
        return dict(self.pos), {"p0": meet, "p1": meet + 0.1}, {"p0": done, "p1": done}, {"p0": False, "p1": False}, {}

    def render(self):
        return {"width": 10, "height": 10, "shapes": []}


def make(**kwargs):
    return Duo(**kwargs)
'''
STUDY = """
from server.agents import Bot, Human, RandomPolicy
from server.experiment import EndScene, Experiment, GymScene, StartScene
from server.multiplayer import Multiplayer

KEYS = {"ArrowLeft": 0, "ArrowUp": 1, "ArrowRight": 2}
duo = GymScene(
    "duo",
    environment="duo_env:make",
    env_kwargs={"size": 7},
    agents={"p0": Human(keys=KEYS, default_action=1), "p1": Human(keys=KEYS, default_action=1)},
    input="held",
    fps=10,
    episodes=3,
    max_steps=5,
    multiplayer=Multiplayer(input_delay=1, hash_every=2, wait_timeout_s=30, on_no_match="bot",
                            bot=Bot(RandomPolicy(actions=(0, 1, 2)))),
)
experiment = Experiment("duo", [StartScene(), duo, EndScene(completion_code="DONE")])
"""


@pytest.fixture
def study(tmp_path: Path, monkeypatch) -> Path:
    """The study's folder; the simulated pages import its environment here, the export's check in its child."""
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "duo_env.py").write_text(ENV)
    (folder / "study.py").write_text(textwrap.dedent(STUDY))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "duo_env", raising=False)
    return folder / "study.py"


class Page:
    """One participant's page in lockstep, as client/web/match.js plays it: steps the environment only on the
    server's frames, resets the next episode after a terminated/truncated step or max_steps, sends its input one
    frame ahead (the input delay), a state hash every `hash_every` frames and its steps rows."""

    def __init__(self, session: Session, sent: list[dict], scene, skip: set[int] = frozenset()) -> None:
        self.session, self.sent, self.scene, self.skip = session, sent, scene, skip
        self.applied, self.episode, self.step, self.over, self.done, self.reported = 0, 0, 0, False, False, False
        self.team = None
        self.chosen: dict[str, int] = {}

    def start(self) -> None:
        match = [m for m in self.sent if m["type"] == "match"][-1]
        self.match = match
        agents = {a: k.payload() for a, k in self.scene.agents.items()}
        self.team = load_team(self.scene.environment, self.scene.env_kwargs, agents)
        self.team.reset(match["seeds"][0])
        assert (
            self.session.fire("match_ready", {"type": "match_ready", "match_id": match["match_id"]}) is Fired.ACCEPTED
        )
        self.send_input(1)

    def action(self, f: int) -> int:
        return (f * 7 + len(self.match["agent"])) % 3 if self.match["agent"] == "p0" else (f * 5) % 3

    def send_input(self, f: int) -> None:
        if f not in self.skip:
            self.session.fire("input", {"type": "input", "f": f, "action": self.action(f)})

    def catch_up(self) -> None:
        for frame in [m for m in self.sent if m["type"] == "frame" and m["f"] > self.applied]:
            if self.done:
                return
            if self.over:
                self.episode += 1
                self.team.reset(self.match["seeds"][self.episode])
                self.step, self.over, self.chosen = 0, False, {}
            actions = dict(frame["actions"])
            for agent in frame.get("bots") or []:
                if self.team.agents[agent]["kind"] != "bot":
                    self.team.assign(agent, self.scene.multiplayer.bot.payload())
                actions[agent] = self.team.act(agent)
            result = self.team.step(actions)
            self.applied, self.step = frame["f"], self.step + 1
            self.over = result["terminated"] or result["truncated"] or self.step >= self.scene.max_steps
            self.done = self.over and self.episode + 1 >= self.scene.episodes
            f = frame["f"]
            row = {"episode": self.episode, "step": self.step, "frame": f, "match_id": self.match["match_id"],
                   "action": actions[self.match["agent"]], "actions": actions, "reward": result["reward"]}  # fmt: skip
            self.session.fire("steps", {"type": "steps", "steps": [row]})
            if f % self.match["hash_every"] == 0:
                self.session.fire("state_hash", {"type": "state_hash", "f": f, "hash": self.team.state_hash()})
            if not self.done:
                self.send_input(f + self.match["input_delay"])
        if self.done and not self.reported:
            self.reported = True
            self.session.fire("game_over", {"type": "game_over", "steps": self.applied, "frames": self.applied})


def play(data: Path, study_file: Path, players: int = 2, skip: set[int] = frozenset()) -> str:
    """A match played to its end into `data`; returns its id."""
    experiment = load_study(str(study_file)).experiment
    scene = experiment.scenes[1]
    store = DataStore(data)
    clock = TimeClock()
    lobby = Lobby(clock, store.open_match, MatchMachine())
    pages = []
    for i in range(players):
        sent: list[dict] = []
        _, log = store.open_session()
        session = Session(SessionMachine(), experiment, clock, sent.append, log=log, timeouts=Timeouts(),
                          lobby=lobby, user_agent=DESKTOP_CHROMIUM["user_agent"])  # fmt: skip
        session.rtt_ms = 20.0
        for message in ({"type": "hello", "participant_id": f"=person{i}"}, SCREENING, READY, {"type": "advance"}):
            assert session.fire(message["type"], message) is Fired.ACCEPTED
        pages.append(Page(session, sent, scene, skip if i == 1 else set()))
    clock.advance(0.01 if players == 2 else 31.0)
    clock.advance(0.01)
    match = pages[0].session.match
    for page in pages:
        page.start()
    for _ in range(400):
        clock.advance(0.1)
        for page in pages:
            page.catch_up()
        if match.outcome is not None:
            break
    assert match.outcome == "completed", match.state
    store.pool.close_all()
    return match.match_id


def rows(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]


def test_a_played_match_exports_its_tables_and_replays_to_the_same_hashes(tmp_path, study):
    data, out = tmp_path / "data", tmp_path / "out"
    match_id = play(data, study, skip={3, 4, 9})
    assert main(["--data-dir", str(data), "--format", "jsonl", "-o", str(out), "--experiment", str(study)]) == 0
    [match] = rows(out, "matches")
    records = list(read_records(data / "matches" / f"{match_id}.msgpack"))
    hashes = [r for r in records if r["kind"] == "hash"]
    last = next(r for r in records if r["kind"] == "end")["frames"]
    assert match["match_id"] == match_id and match["outcome"] == "completed" and match["scene_id"] == "duo"
    assert match["replay_check"] == f"ok ({len(hashes)} hashes)" and len(hashes) == 2 * (last // 2)
    assert match["agent1"] == "p0" and match["agent1_participant_id"] == "=person0" and match["agent2_bot"] is None
    assert match["agent2_filled"] == 3 and match["agent1_filled"] == 0 and match["filled"] == 3
    assert match["input_delay"] == 1 and match["fps"] == 10 and match["frames"] == last and match["desync_f"] is None
    assert len(match["seeds"]) == 3 and match["started_wall"] <= match["ended_wall"]
    frames = rows(out, "frames")
    assert {(r["f"], r["agent"]) for r in frames} >= {(f, a) for f in range(1, last + 1) for a in ("p0", "p1")}
    assert [r["f"] for r in frames if r["filled"]] == [3, 4, 9] and not any(r["bot"] for r in frames)
    people = rows(out, "participants")
    assert sorted(p["matches"][0]["agent"] for p in people) == ["p0", "p1"]
    assert {p["matches"][0]["match_id"] for p in people} == {match_id}
    steps = [s for s in rows(out, "steps") if s["agent"] == "p1"]
    assert [s["frame"] for s in steps] == list(range(1, last + 1)) and {s["match_id"] for s in steps} == {match_id}
    assert {s["seed"] for s in steps} == set(match["seeds"])  # the match's seeds, not the participant's own

    export(data, "csv", tmp_path / "csv")  # no study: the check does not run, and says how to make it
    text = (tmp_path / "csv" / "matches.csv").read_text()
    assert "not run: give --experiment" in text and "'=person0" in text and "=person0" not in text.replace("'=", "")


def test_a_tampered_frame_is_a_mismatch_at_its_hash(tmp_path, study):
    """Frame 6 has a hash after it (hash_every=2); a frame whose effect an episode's reset wipes before the next
    hash (the last of an episode) could change unseen: the check sees what the hashes see."""
    data = tmp_path / "data"
    match_id = play(data, study)
    path = data / "matches" / f"{match_id}.msgpack"
    records = list(read_records(path))
    for record in records:
        if record["kind"] == "frame" and record["f"] == 6:
            record["actions"]["p0"] = (record["actions"]["p0"] + 1) % 3
    path.write_bytes(b"".join(framed(msgpack.packb(r, use_bin_type=True)) for r in records))
    export(data, "jsonl", tmp_path / "out", load_study(str(study)))
    [match] = rows(tmp_path / "out", "matches")
    assert match["replay_check"] == "mismatch at f=6"


def test_a_match_with_a_bot_replays_its_choices_and_a_missing_module_is_not_run(tmp_path, study):
    data = tmp_path / "data"
    play(data, study, players=1)  # nobody else came: on_no_match="bot"
    export(data, "jsonl", tmp_path / "out", load_study(str(study)))
    [match] = rows(tmp_path / "out", "matches")
    assert match["replay_check"].startswith("ok (") and match["agent2_bot"] == "random"
    assert match["agent2_bot_from_f"] == 1 and match["agent2_session_id"] is None
    bots = [r for r in rows(tmp_path / "out", "frames") if r["bot"]]
    assert bots and {r["agent"] for r in bots} == {"p1"} and all(r["action"] in (0, 1, 2) for r in bots)
    (study.parent / "duo_env.py").unlink()
    export(data, "jsonl", tmp_path / "again", load_study(str(study)))
    [match] = rows(tmp_path / "again", "matches")
    assert match["replay_check"].startswith("not run: could not import duo_env")


def test_an_experiment_that_does_not_load_is_named(tmp_path, study, capsys):
    data = tmp_path / "data"
    play(data, study)
    assert main(["--data-dir", str(data), "--experiment", str(tmp_path / "nope.py")]) == 2
    assert "experiment file not found" in capsys.readouterr().err


def test_two_chromium_pages_hashes_replay_in_the_export(tmp_path, browser):
    """The coop example played by two real pages (Pyodide in Chromium's workers): the export's CPython replay gives
    the hashes the pages sent, and each player's steps rows name the frames table's actions for their agent."""
    from client.harness import served
    from tests.test_multiplayer_browser import COOP
    from tests.test_multiplayer_browser import play as play_in_chromium

    data, out = tmp_path / "data", tmp_path / "out"
    with served(data, "--experiment", str(COOP / "study.py")) as url:
        play_in_chromium(browser, url, ("md_a", "md_b"))
    assert (
        main(["--data-dir", str(data), "--format", "jsonl", "-o", str(out), "--experiment", str(COOP / "study.py")])
        == 0
    )
    [match] = rows(out, "matches")
    assert match["outcome"] == "completed" and match["hashes"] > 0
    assert match["replay_check"] == f"ok ({match['hashes']} hashes)"
    actions = {(r["f"], r["agent"]): r["action"] for r in rows(out, "frames")}
    played = [s for s in rows(out, "steps") if s["match_id"] == match["match_id"]]
    assert {s["agent"] for s in played} == {match["agent1"], match["agent2"]}
    assert all(actions[(s["frame"], s["agent"])] == s["action"] for s in played)
