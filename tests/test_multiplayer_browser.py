"""Two real Chromium pages play the coop example together: matched by the server, stepped in lockstep by its
frames, each with its own key held; a reload mid-match rebuilds the game from the seed and the frames.

One browser, two contexts: two participants with nothing shared (sessionStorage, cookies) but the server.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from client.harness import ROOT, records_of, served
from server.export import main as export_main
from server.game_contract import replay_match
from server.store import read_records

COOP = ROOT / "server" / "examples" / "coop"
STUDY = COOP / "study.py"
LOAD_TIMEOUT_MS = 90_000
MATCH_TIMEOUT_MS = 120_000
HELD = ("ArrowRight", "ArrowDown")  # one key each page holds for the whole game
DUMP = """JSON.stringify({states: __preflight.states.slice(-3), errors: __preflight.errors, match: __preflight.match,
                      steps: __preflight.steps, runtime: __preflight.runtime?.status, text: document.body.innerText})"""


def walk_to_the_game(page, url: str, participant: str) -> None:
    page.goto(f"{url}?PROLIFIC_PID={participant}")
    page.wait_for_function("window.__preflight.state?.may_advance === true", timeout=LOAD_TIMEOUT_MS)
    page.click("#advance")  # the instructions
    page.wait_for_function(
        "window.__preflight.state?.scene_id === 'instructions' && window.__preflight.state?.may_advance === true",
        timeout=LOAD_TIMEOUT_MS,
    )
    page.click("#advance")  # the kitchen: the waiting room, until the server matches


def finished(page) -> None:
    """The page played its game to the end and reported it: the server lets it move on."""
    page.wait_for_function(
        "window.__preflight.state?.scene_id === 'kitchen' && window.__preflight.state?.may_advance === true",
        timeout=MATCH_TIMEOUT_MS,
    )


def steps_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [step for r in records if r["kind"] == "steps" and r["scene_id"] == "kitchen" for step in r["steps"]]


def match_log(data: Path, match_id: str) -> list[dict[str, Any]]:
    """The canonical record of the match, once the server has ended it (it ends when every page has reported)."""
    path = data / "matches" / f"{match_id}.msgpack"
    deadline = time.monotonic() + MATCH_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        records = list(read_records(path)) if path.exists() else []
        if any(r["kind"] == "end" for r in records):
            return records
        time.sleep(0.1)
    raise AssertionError(f"the match {match_id} never ended: {[r['kind'] for r in records][-5:]}")


def play(browser, url: str, participants: tuple[str, str], reload_at: int | None = None) -> list[dict[str, Any]]:
    """Both pages into the game and to its end; with `reload_at`, the second page reloads once it applied that many
    frames. Returns what each page knows of its match (`window.__preflight`)."""
    contexts = [browser.new_context() for _ in participants]
    pages = [context.new_page() for context in contexts]
    try:
        for page, participant in zip(pages, participants, strict=True):
            walk_to_the_game(page, url, participant)
        for page in pages:
            page.wait_for_function("window.__preflight.match !== null", timeout=MATCH_TIMEOUT_MS)
            page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=LOAD_TIMEOUT_MS)
        for page, key in zip(pages, HELD, strict=True):
            page.keyboard.down(key)
        if reload_at is not None:
            pages[1].wait_for_function(f"window.__preflight.steps >= {reload_at}", timeout=MATCH_TIMEOUT_MS)
            pages[1].reload()
            pages[1].wait_for_function("window.__preflight.match !== null", timeout=MATCH_TIMEOUT_MS)
            pages[1].keyboard.down(HELD[1])  # read once the game is back (the server fills the held key until then)
        for page in pages:
            finished(page)
        known = "({match: __preflight.match, hashes: __preflight.hashes, end: __preflight.matchEnd,"
        known += " partners: __preflight.partners.map((p) => p.status)})"
        return [page.evaluate(known) for page in pages]
    except Exception:
        for page in pages:  # what each page knew, to see where it stopped
            print(page.evaluate(DUMP))
        raise
    finally:
        for context in contexts:
            context.close()


def check_the_match(data: Path, seen: list[dict[str, Any]], participants: tuple[str, str]) -> None:
    """Both pages in one match, equal state hashes, the canonical log and both players' rows the same frames and
    actions, each frame recorded once per player, and CPython's replay of the log giving the pages' hashes."""
    [match_id] = {s["match"]["match_id"] for s in seen}
    assert {s["match"]["agent"] for s in seen} == {"chef_0", "chef_1"}
    hashes = [dict(map(tuple, s["hashes"])) for s in seen]  # a reloaded page sends only what it had not sent
    assert hashes[0] and all(h[f] == hashes[0][f] for h in hashes for f in h)

    log = match_log(data, match_id)
    [end] = [r for r in log if r["kind"] == "end"]
    assert end["outcome"] == "completed" and end["frames"] == 60
    assert [s["end"]["outcome"] for s in seen if s["end"]] in (["completed"], ["completed"] * 2)  # shown on the page
    frames = [r for r in log if r["kind"] == "frame"]
    [start] = [r for r in log if r["kind"] == "match"]
    rows = {p: steps_of(records_of(data, p)) for p in participants}
    for participant, played in rows.items():
        assert [s["frame"] for s in played] == list(range(1, len(played) + 1)), participant  # none lost, none twice
        assert {s["match_id"] for s in played} == {match_id}
    for participant in participants:  # each reported the whole game once, and the server got every row it counts
        [over] = [r for r in records_of(data, participant) if r["kind"] == "game_over"]
        assert over["data"]["frames"] == 60 and over["data"]["match_id"] == match_id and over["check"]["complete"]
    first, second = rows.values()
    assert len(first) == len(second) == 60  # two episodes of max_steps, the kitchen's pass never reached
    assert [s["actions"] for s in first] == [s["actions"] for s in second]
    assert [(s["episode"], s["step"]) for s in first] == [(e, k) for e in (0, 1) for k in range(1, 31)]
    by_frame = {r["f"]: r for r in frames}
    for step in first:
        assert step["actions"] == by_frame[step["frame"]]["actions"]
    agent_of = {s["match"]["agent"]: key for s, key in zip(seen, HELD, strict=True)}
    moves = {"ArrowRight": 3, "ArrowDown": 1}
    for agent, key in agent_of.items():  # each page's key played its own chef, after the first frames' defaults
        assert moves[key] in {s["actions"][agent] for s in first}

    replayed = replay_match(
        "kitchen_env:make",
        {"max_steps": 30},
        start["agents"],
        start["seeds"],
        [by_frame[s["frame"]] for s in first],
        episodes=2,
        max_steps=30,
    )
    assert {r["f"]: r["hash"] for r in replayed if r["f"] in hashes[0]} == hashes[0]

    # The export's own check replays the match in a child CPython against every hash the pages sent.
    out = data.parent / "export"
    assert export_main(["--data-dir", str(data), "--format", "jsonl", "-o", str(out), "--experiment", str(STUDY)]) == 0
    [row] = [json.loads(line) for line in (out / "matches.jsonl").read_text().splitlines()]
    assert row["match_id"] == match_id and row["replay_check"].startswith("ok (") and row["outcome"] == "completed"


def test_two_pages_are_matched_and_play_one_game_in_lockstep(tmp_path, browser, monkeypatch):
    monkeypatch.syspath_prepend(str(COOP))
    data = tmp_path / "data"
    participants = ("mp_a", "mp_b")
    with served(data, "--experiment", str(STUDY)) as url:
        seen = play(browser, url, participants)
    assert all(s["match"]["replayed"] == 0 for s in seen)
    check_the_match(data, seen, participants)


def test_a_page_reloaded_mid_match_rebuilds_the_game_and_finishes_it(tmp_path, browser, monkeypatch):
    monkeypatch.syspath_prepend(str(COOP))
    data = tmp_path / "data"
    participants = ("mp_c", "mp_d")
    with served(data, "--experiment", str(STUDY)) as url:
        seen = play(browser, url, participants, reload_at=10)
    assert seen[1]["match"]["replayed"] >= 10  # the server sent the frames closed so far; the page replayed them
    assert seen[0]["partners"] == ["reconnecting", "connected"]  # the partner's drop and return, as the server saw them
    check_the_match(data, seen, participants)


ALONE = """
from server.agents import Bot, Human, PythonPolicy
from server.experiment import EndScene, Experiment, GymScene, StartScene
from server.multiplayer import FIFO, Multiplayer

KEYS = {"ArrowUp": 0, "ArrowDown": 1, "ArrowLeft": 2, "ArrowRight": 3}
experiment = Experiment(
    name="alone-test",
    scenes=[
        StartScene(title="Welcome"),
        GymScene(
            "kitchen",
            environment="kitchen_env:make",
            env_kwargs={"max_steps": 20},
            agents={"chef_0": Human(keys=KEYS, default_action=4), "chef_1": Human(keys=KEYS, default_action=4)},
            input="held", fps=10, episodes=1, max_steps=20,
            multiplayer=Multiplayer(matchmaker=FIFO(), wait_timeout_s=4, on_no_match="bot", hash_every=5,
                                    bot=Bot(PythonPolicy("kitchen_env:toward_pass"))),
        ),
        EndScene(html="<p>Done</p>"),
    ],
)
"""


def test_alone_past_the_wait_a_participant_plays_with_the_scene_s_bot(tmp_path, browser, monkeypatch):
    """The waiting room shows who waits and the time left; at the server's deadline the empty slot goes to the bot,
    which the page runs itself (Team.assign) exactly as CPython replays it from the log."""
    monkeypatch.syspath_prepend(str(COOP))
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(COOP / "kitchen_env.py", study / "kitchen_env.py")
    (study / "study.py").write_text(ALONE)
    data = tmp_path / "data"
    context = browser.new_context()
    try:
        with served(data, "--experiment", str(study / "study.py")) as url:
            page = context.new_page()
            page.goto(f"{url}?PROLIFIC_PID=alone")
            page.wait_for_function("window.__preflight.state?.may_advance === true", timeout=LOAD_TIMEOUT_MS)
            page.click("#advance")
            page.wait_for_function(
                "document.getElementById('hint').textContent.includes('Waiting for a partner… 1 of 2 players here')",
                timeout=MATCH_TIMEOUT_MS,
            )
            finished(page)
            seen = page.evaluate("({match: __preflight.match, hashes: __preflight.hashes})")
    finally:
        context.close()
    log = match_log(data, seen["match"]["match_id"])
    [start] = [r for r in log if r["kind"] == "match"]
    assert start["bots"] == ["chef_1"] and seen["match"]["agent"] == "chef_0"
    played = steps_of(records_of(data, "alone"))
    assert [s["frame"] for s in played] == list(range(1, 21))
    assert all(s["by"] == {"chef_0": "human", "chef_1": "bot"} for s in played)
    frames = [r for r in log if r["kind"] == "frame"]
    replayed = replay_match(
        "kitchen_env:make", {"max_steps": 20}, start["agents"], start["seeds"], frames, episodes=1, max_steps=20,
        bot=start["bot"],
    )  # fmt: skip
    assert [r["actions"] for r in replayed] == [s["actions"] for s in played]
    assert len({s["actions"]["chef_1"] for s in played}) > 1  # the bot walked toward the pass
    hashes = dict(map(tuple, seen["hashes"]))
    assert hashes and {r["f"]: r["hash"] for r in replayed if r["f"] in hashes} == hashes


TURNS = ALONE.replace('name="alone-test"', 'name="turns-test"').replace(
    'input="held", fps=10, episodes=1, max_steps=20', 'input="turn", fps=10, episodes=1, max_steps=4'
)


def test_turns_close_when_both_players_have_moved(tmp_path, browser, monkeypatch):
    """ "turn" input: each press is the page's input for the next frame it owes, and the server closes a frame when
    both have moved; four presses on each page make the four steps of the episode, nothing filled."""
    monkeypatch.syspath_prepend(str(COOP))
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(COOP / "kitchen_env.py", study / "kitchen_env.py")
    (study / "study.py").write_text(TURNS.replace("wait_timeout_s=4", "wait_timeout_s=120"))
    data = tmp_path / "data"
    contexts = [browser.new_context() for _ in range(2)]
    try:
        with served(data, "--experiment", str(study / "study.py")) as url:
            pages = [context.new_page() for context in contexts]
            for page, participant in zip(pages, ("turn_a", "turn_b"), strict=True):
                page.goto(f"{url}?PROLIFIC_PID={participant}")
                page.wait_for_function("window.__preflight.state?.may_advance === true", timeout=LOAD_TIMEOUT_MS)
                page.click("#advance")
            for page in pages:
                page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=MATCH_TIMEOUT_MS)
            for page, key in zip(pages, HELD, strict=True):
                for _ in range(4):
                    page.keyboard.press(key)
            for page in pages:
                finished(page)
            agents = [page.evaluate("__preflight.match.agent") for page in pages]
    finally:
        for context in contexts:
            context.close()
    moves = {"ArrowRight": 3, "ArrowDown": 1}
    expected = {agent: moves[key] for agent, key in zip(agents, HELD, strict=True)}
    for participant in ("turn_a", "turn_b"):
        played = steps_of(records_of(data, participant))
        assert [s["frame"] for s in played] == [1, 2, 3, 4]
        assert all(s["actions"] == expected and s["filled"] == [] for s in played)
