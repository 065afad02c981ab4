"""Two real Chromium pages play the coop example together: matched by the server, stepped in lockstep by its
frames, each with its own key held; a reload mid-match rebuilds the game from the seed and the frames.

One browser, two contexts: two participants with nothing shared (sessionStorage, cookies) but the server.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from client.harness import ROOT, records_of, served
from server.game_contract import replay_match
from server.store import read_records

COOP = ROOT / "server" / "examples" / "coop"
LOAD_TIMEOUT_MS = 90_000
MATCH_TIMEOUT_MS = 120_000
HELD = ("ArrowRight", "ArrowDown")  # one key each page holds for the whole game


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
    try:
        pages = [context.new_page() for context in contexts]
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
            pages[1].wait_for_function("window.__preflight.firstFrameAt !== null", timeout=LOAD_TIMEOUT_MS)
            pages[1].keyboard.down(HELD[1])
        for page in pages:
            finished(page)
        known = "({match: __preflight.match, hashes: __preflight.hashes, end: __preflight.matchEnd})"
        return [page.evaluate(known) for page in pages]
    finally:
        for context in contexts:
            context.close()


def check_the_match(data: Path, seen: list[dict[str, Any]], participants: tuple[str, str]) -> None:
    """Both pages in one match, equal state hashes, the canonical log and both players' rows the same frames and
    actions, each frame recorded once per player, and CPython's replay of the log giving the pages' hashes."""
    [match_id] = {s["match"]["match_id"] for s in seen}
    assert {s["match"]["agent"] for s in seen} == {"chef_0", "chef_1"}
    assert seen[0]["hashes"] and dict(map(tuple, seen[0]["hashes"])) == dict(map(tuple, seen[1]["hashes"]))

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
    assert {r["f"]: r["hash"] for r in replayed if r["f"] in dict(map(tuple, seen[0]["hashes"]))} == dict(
        map(tuple, seen[0]["hashes"])
    )


def test_two_pages_are_matched_and_play_one_game_in_lockstep(tmp_path, browser, monkeypatch):
    monkeypatch.syspath_prepend(str(COOP))
    data = tmp_path / "data"
    participants = ("mp_a", "mp_b")
    with served(data, "--experiment", str(COOP / "study.py")) as url:
        seen = play(browser, url, participants)
    assert all(s["match"]["replayed"] == 0 for s in seen)
    check_the_match(data, seen, participants)


def test_a_page_reloaded_mid_match_rebuilds_the_game_and_finishes_it(tmp_path, browser, monkeypatch):
    monkeypatch.syspath_prepend(str(COOP))
    data = tmp_path / "data"
    participants = ("mp_c", "mp_d")
    with served(data, "--experiment", str(COOP / "study.py")) as url:
        seen = play(browser, url, participants, reload_at=10)
    assert seen[1]["match"]["replayed"] >= 10  # the server sent the frames closed so far; the page replayed them
    check_the_match(data, seen, participants)
