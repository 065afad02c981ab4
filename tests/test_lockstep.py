"""The contract's side of multiplayer lockstep: state hashes, a bot taking over a slot, a match's frames replayed
(as client/web/match.js applies them) in CPython and in the page's Pyodide with the same hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import game_contract
from server.agents import Bot, Human, PythonPolicy
from server.game_contract import ContractError, Team, load_team, replay_match
from tests.support import run_in_pyodide

COOP = Path(game_contract.__file__).parent / "examples" / "coop"
HUMANS = {"chef_0": Human(default_action=4).payload(), "chef_1": Human(default_action=4).payload()}
BOT = Bot(PythonPolicy("kitchen_env:toward_pass")).payload()


@pytest.fixture(autouse=True)
def kitchen(monkeypatch):
    monkeypatch.syspath_prepend(str(COOP))


def frames(count: int, **extra: object) -> list[dict]:
    """Frames as the server closes them: chef_0 walks right, chef_1 up, then both stay."""
    return [
        {"f": f, "actions": {"chef_0": 3 if f % 4 else 4, "chef_1": 0 if f % 3 else 4}, "filled": [], **extra}
        for f in range(1, count + 1)
    ]


def test_the_state_hash_is_the_observations_and_returns_and_moves_with_the_game():
    team = load_team("kitchen_env:make", {"max_steps": 30}, HUMANS)
    team.reset(5)
    first = team.state_hash()
    again = load_team("kitchen_env:make", {"max_steps": 30}, HUMANS)
    again.reset(5)
    assert again.state_hash() == first and len(first) == 16
    team.step({"chef_0": 4, "chef_1": 4})  # nobody moves, but the step's cost changes the returns
    assert team.state_hash() != first
    team.reset(5)
    assert team.state_hash() == first  # the returns count from the episode's reset


def test_an_environment_may_give_its_own_state_hash():
    import kitchen_env

    class Hashed(kitchen_env.Kitchen):
        def state_hash(self):
            return f"{self.positions['chef_0']}"

    team = Team(Hashed(), HUMANS)
    team.reset(1)
    assert team.state_hash() == "(0, 0)"
    Hashed.state_hash = lambda self: None  # type: ignore[assignment, method-assign]
    with pytest.raises(ContractError, match="state_hash\\(\\) returned None"):
        team.state_hash()


def test_a_bot_takes_over_a_slot_and_replays_the_same():
    with pytest.raises(ContractError, match="no agent chef_9"):
        load_team("kitchen_env:make", {}, HUMANS).assign("chef_9", BOT)
    played = frames(12)[:4] + frames(12, bots=["chef_1"])[4:]
    runs = [replay_match("kitchen_env:make", {"max_steps": 30}, HUMANS, [7, 8], played, episodes=2, max_steps=30,
                         bot=BOT) for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1]
    [run] = runs[:1]
    assert [r["actions"]["chef_1"] for r in run[:4]] == [p["actions"]["chef_1"] for p in played[:4]]
    team = load_team("kitchen_env:make", {"max_steps": 30}, HUMANS)
    team.reset(7)
    for r in run[:4]:
        team.step(r["actions"])
    team.assign("chef_1", BOT)
    expected = []
    for r in run[4:]:
        expected.append(team.act("chef_1"))
        team.step(r["actions"])
    assert [r["actions"]["chef_1"] for r in run[4:]] == expected
    with pytest.raises(ContractError, match="no bot payload"):
        replay_match("kitchen_env:make", {}, HUMANS, [7], played, episodes=1, max_steps=30)


def test_episodes_end_at_max_steps_and_frames_past_the_last_episode_are_not_applied():
    run = replay_match("kitchen_env:make", {"max_steps": 50}, HUMANS, [3, 4], frames(25), episodes=2, max_steps=10)
    assert [(r["episode"], r["step"]) for r in run] == [(0, s) for s in range(1, 11)] + [(1, s) for s in range(1, 11)]
    shuffled = list(reversed(frames(25)))  # applied in order of f, however they arrived
    assert replay_match("kitchen_env:make", {}, HUMANS, [3, 4], shuffled, episodes=2, max_steps=10) == run


def test_the_page_s_pyodide_gives_the_same_hashes_as_cpython(tmp_path):
    """The hash every page sends is compared with the others' and with the export's CPython replay."""
    played = frames(40)[:20] + frames(40, bots=["chef_0"])[20:]
    args = ("kitchen_env:make", {"max_steps": 30}, HUMANS, [11, 12], played)
    files = [(str(Path(game_contract.__file__)), "game_contract.py"), (str(COOP / "kitchen_env.py"), "kitchen_env.py")]
    code = (
        "import sys, json; sys.path.insert(0, '/home/pyodide'); import game_contract as gc\n"
        f"json.dumps(gc.replay_match(*{args!r}, episodes=2, max_steps=15, bot={BOT!r}))"
    )
    in_pyodide = run_in_pyodide(tmp_path, files, code)
    assert in_pyodide == replay_match(*args, episodes=2, max_steps=15, bot=BOT)
    assert len({r["hash"] for r in in_pyodide}) > 10
