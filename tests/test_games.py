"""A researcher's own games in real Chromium: the README's study, the examples, a broken environment.

Each study is served by `python -m server`; each game is played to its end, exported, and its steps replayed
in CPython through the same environment with the recorded seeds (rewards and terminations must match).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from client.harness import ROOT, records_of, served
from server.export import export
from server.game_contract import replay

EXAMPLES = ROOT / "server" / "examples"
LOAD_MS = 90_000
STEP_MS = 30_000


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, screen={"width": 1920, "height": 1080})
    yield ctx
    ctx.close()


def state_is(page, name: str, timeout: int = STEP_MS, **where: str) -> None:
    cond = " && ".join([f"s.state === '{name}'"] + [f"s.{k} === {v!r}" for k, v in where.items()])
    page.wait_for_function(f"(() => {{ const s = window.__preflight?.state; return s && {cond}; }})()", timeout=timeout)


def enter_game(page, url: str, participant: str) -> None:
    page.goto(f"{url}?PROLIFIC_PID={participant}")
    state_is(page, "ready", timeout=LOAD_MS, scene_id="start")
    page.click("#advance")
    state_is(page, "ready", scene_id="instructions")
    page.click("#advance")
    state_is(page, "in_game")
    page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=STEP_MS)


def show_tab(page, visibility: str) -> None:
    """What switching tabs does to the page: `document.visibilityState` changes and `visibilitychange` fires."""
    page.evaluate(
        """(visibility) => {
            Object.defineProperty(document, "visibilityState", { configurable: true, get: () => visibility });
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        visibility,
    )


def exported_steps(data: Path, out: Path, participant: str) -> list[dict]:
    export(data, "jsonl", out)
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return [r for r in rows if r["participant_id"] == participant]


def check_reproducible(rows: list[dict], environment: str, env_kwargs: dict, folder: Path, monkeypatch) -> int:
    """Replay every exported episode in CPython with its seed and actions; returns how many steps matched."""
    monkeypatch.syspath_prepend(str(folder))
    episodes: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        episodes[row["episode"]].append(row)
    for episode, steps in sorted(episodes.items()):
        assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)), f"episode {episode} has a gap"
        [again] = replay(environment, env_kwargs, [(steps[0]["seed"], [s["action"] for s in steps])])
        assert [(r["reward"], r["terminated"]) for r in again] == [(s["reward"], s["terminated"]) for s in steps]
    return len(rows)


def readme_files() -> dict[str, str]:
    """The README's code blocks that start with `# <file>.py`, by file name."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n# (\w+\.py)\n(.*?)```", readme, re.S)
    return {name: body for name, body in blocks}


def test_the_readmes_study_is_played_to_the_end_and_its_export_replays(context, tmp_path, monkeypatch):
    files = readme_files()
    assert set(files) == {"my_env.py", "study.py"}
    study = tmp_path / "my-study"
    study.mkdir()
    for name, body in files.items():
        (study / name).write_text(body)
    data = tmp_path / "data"
    with served(data, "--experiment", str(study / "study.py")) as url:
        page = context.new_page()
        enter_game(page, url, "readme")
        page.keyboard.down("ArrowRight")  # held: the square moves every tick while the key is down
        # Counted from the key, not from the game's start: ticks already played (or in flight to the page when the
        # key went down) would otherwise end the hold early; two ticks spare for the key's way to the worker.
        held_from = page.evaluate("window.__preflight.steps")
        page.wait_for_function(f"window.__preflight.steps >= {held_from + 7}", timeout=STEP_MS)
        page.keyboard.up("ArrowRight")
        state_is(page, "ready", scene_id="walk")  # two episodes of 30 ticks, then game_over
        page.click("#advance")
        state_is(page, "completed")
        assert page.inner_text("#completion-code") == "ABC123"
    rows = exported_steps(data, tmp_path / "export", "readme")
    assert len(rows) == 60 and {r["episode"] for r in rows} == {0, 1}
    held = [r for r in rows if r["keys"] == ["ArrowRight"]]  # the key may reach the loop a tick after it starts
    assert len(held) >= 5 and {r["action"] for r in held} == {2}
    assert all(r["truncated"] for r in rows if r["step"] == 30)
    assert check_reproducible(rows, "my_env:make", {}, study, monkeypatch) == 60
    [over] = [r for r in records_of(data, "readme") if r["kind"] == "game_over"]
    assert over["data"]["episodes"] == 2 and over["check"]["complete"] is True


def test_catch_plays_in_real_time_and_a_hidden_tab_plays_the_default_action(context, tmp_path, monkeypatch):
    data = tmp_path / "data"
    with served(data, "--experiment", str(EXAMPLES / "catch" / "study.py")) as url:
        page = context.new_page()
        enter_game(page, url, "catcher")
        page.keyboard.down("ArrowLeft")
        page.wait_for_function("window.__preflight.steps >= 10", timeout=STEP_MS)
        page.keyboard.up("ArrowLeft")
        show_tab(page, "hidden")
        page.keyboard.down("ArrowRight")  # pressed while hidden: not the participant's choice, not played
        page.wait_for_function("window.__preflight.steps >= 25", timeout=STEP_MS)
        page.keyboard.up("ArrowRight")
        show_tab(page, "visible")
        state_is(page, "ready", timeout=120_000, scene_id="catch")
    rows = exported_steps(data, tmp_path / "export", "catcher")
    hidden = [r for r in rows if not r["visible"]]
    assert hidden and all(r["action"] == 1 for r in hidden)  # the scene's default_action
    assert any(r["action"] == 0 for r in rows if r["visible"])
    assert {r["episode"] for r in rows} == {0, 1}
    check_reproducible(rows, "catch_env:make", {"balls": 5, "max_steps": 300}, EXAMPLES / "catch", monkeypatch)


def test_pixels_draws_rgb_frames_and_plays_each_press(context, tmp_path, monkeypatch):
    data = tmp_path / "data"
    with served(data, "--experiment", str(EXAMPLES / "pixels" / "study.py")) as url:
        page = context.new_page()
        enter_game(page, url, "painter")
        for key in ["ArrowRight", "ArrowDown", "ArrowRight", "ArrowUp"]:
            page.keyboard.press(key)
            page.wait_for_timeout(150)
        state_is(page, "ready", timeout=STEP_MS, scene_id="pixels")
        size = page.evaluate("[document.getElementById('game').width, document.getElementById('game').height]")
        painted = page.evaluate("""() => {
            const c = document.getElementById('game');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let coloured = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2]) coloured++;
            return coloured;
        }""")
    assert size[0] == size[1] and painted > 0
    rows = exported_steps(data, tmp_path / "export", "painter")
    assert len(rows) == 20 and [r["action"] for r in rows if r["keys"]][:4] == [2, 3, 2, 1]
    check_reproducible(rows, "pixels_env:make", {"targets": 6, "steps": 20}, EXAMPLES / "pixels", monkeypatch)


BROKEN = """
class Broken:
    def reset(self, seed):
        return 7

    def step(self, action):
        return 0, 0.0, True, False, {}

    def render(self):
        return {"width": 1, "height": 1, "shapes": []}


def make():
    return Broken()
"""


def test_an_environment_that_breaks_the_contract_ends_the_game_as_failed_never_stuck(context, tmp_path):
    study = tmp_path / "broken"
    study.mkdir()
    (study / "broken_env.py").write_text(BROKEN)
    (study / "study.py").write_text(
        "from server.experiment import EndScene, Experiment, GymScene, StartScene, StaticScene\n"
        "experiment = Experiment(name='broken', scenes=[StartScene(), StaticScene('instructions', '<p>Go</p>'),\n"
        "    GymScene('broken', environment='broken_env:make', keys={'ArrowUp': 0}), EndScene(completion_code='X1')])\n"
    )
    data = tmp_path / "data"
    with served(data, "--experiment", str(study / "study.py"), "--admin-token", "t" * 20) as url:
        page = context.new_page()
        page.goto(f"{url}?PROLIFIC_PID=unlucky")
        state_is(page, "ready", timeout=LOAD_MS, scene_id="start")
        page.click("#advance")
        state_is(page, "ready", scene_id="instructions")
        page.click("#advance")
        state_is(page, "ready", scene_id="broken")  # the failed game handed control back
        notice = page.inner_text("#notice")
        assert notice == "The game could not run: reset() returned an int; expected (observation, info)"
        page.click("#advance")
        state_is(page, "completed")
        assert page.is_hidden("#notice")  # the failure was said on the game's scene, not on the end page
        [session] = (data / "sessions").glob("*.msgpack")
        admin = context.new_page()
        admin.set_extra_http_headers({"Authorization": "Bearer " + "t" * 20})
        admin.goto(f"{url}admin/sessions/{session.stem}")
        assert "failed: reset() returned an int; expected (observation, info)" in admin.inner_text("#games")
    [over] = [r for r in records_of(data, "unlucky") if r["kind"] == "game_over"]
    assert over["data"]["failed"] is True and "reset() returned an int" in over["data"]["error"]
    [log] = tmp_path.glob("server-*.log")  # the researcher's terminal says so too, not only the admin view
    assert "game 'broken' failed in the page of participant 'unlucky': 'reset() returned an int" in log.read_text()


def test_a_time_limit_ends_a_game_that_waits_for_keys(context, tmp_path):
    study = tmp_path / "limited"
    study.mkdir()
    for name in ("gridworld_env.py",):
        (study / name).write_text((EXAMPLES / "gridworld" / name).read_text())
    (study / "study.py").write_text(
        "from server.experiment import EndScene, Experiment, GymScene, StartScene, StaticScene\n"
        "experiment = Experiment(name='limited', scenes=[StartScene(), StaticScene('instructions', '<p>Go</p>'),\n"
        "    GymScene('grid', environment='gridworld_env:make', keys={'ArrowRight': 1}, input='turn',\n"
        "             time_limit_s=2), EndScene(completion_code='T1')])\n"
    )
    data = tmp_path / "data"
    with served(data, "--experiment", str(study / "study.py")) as url:
        page = context.new_page()
        enter_game(page, url, "slow")
        page.keyboard.press("ArrowRight")
        state_is(page, "ready", scene_id="grid")  # nobody pressed again: the limit ended it
    [over] = [r for r in records_of(data, "slow") if r["kind"] == "game_over"]
    assert over["data"]["reason"] == "time_limit" and over["data"]["steps"] == 1 and over["check"]["complete"]


def test_pause_when_hidden_stops_the_ticks_until_the_tab_is_back(context, tmp_path):
    files = readme_files()
    study = tmp_path / "paused"
    study.mkdir()
    (study / "my_env.py").write_text(files["my_env.py"])
    (study / "study.py").write_text(
        files["study.py"].replace("episodes=2, show_score=True", "episodes=1, pause_when_hidden=True")
    )
    data = tmp_path / "data"
    with served(data, "--experiment", str(study / "study.py")) as url:
        page = context.new_page()
        enter_game(page, url, "pauser")
        page.wait_for_function("window.__preflight.steps >= 5", timeout=STEP_MS)
        show_tab(page, "hidden")
        paused_at = page.evaluate("window.__preflight.steps")
        page.wait_for_timeout(1500)  # 15 ticks at 10 fps, had the game gone on
        assert page.evaluate("window.__preflight.steps") <= paused_at + 1
        show_tab(page, "visible")
        state_is(page, "ready", scene_id="walk")
    rows = exported_steps(data, tmp_path / "export", "pauser")
    assert len(rows) == 30 and all(r["visible"] for r in rows)


def test_the_partners_example_plays_with_a_python_and_an_onnx_partner_and_replays(context, tmp_path, monkeypatch):
    from server.agents import Bot, Human, PythonPolicy
    from server.game_contract import replay_team

    data = tmp_path / "data"
    with served(data, "--experiment", str(EXAMPLES / "partners" / "study.py")) as url:
        page = context.new_page()
        page.goto(f"{url}?PROLIFIC_PID=partnered")
        state_is(page, "ready", timeout=LOAD_MS, scene_id="start")
        page.click("#advance")
        state_is(page, "ready", scene_id="instructions")
        for scene in ("coop_python", "coop_onnx"):
            page.click("#advance")
            state_is(page, "in_game", scene_id=scene)
            page.keyboard.down("ArrowRight")
            page.wait_for_timeout(500)
            page.keyboard.up("ArrowRight")
            state_is(page, "ready", timeout=60_000, scene_id=scene)
        page.click("#advance")
        state_is(page, "completed")
    records = records_of(data, "partnered")
    seeds = {r["scene_id"]: r["seeds"] for r in records if r["kind"] == "scene" and r.get("seeds")}
    steps = {
        scene: [s for r in records if r["kind"] == "steps" and r["scene_id"] == scene for s in r["steps"]]
        for scene in seeds
    }
    overs = [r for r in records if r["kind"] == "game_over"]
    assert len(overs) == 2 and all(o["check"]["complete"] and not o["data"].get("failed") for o in overs)
    assert all(steps[scene] for scene in ("coop_python", "coop_onnx"))
    assert any(s["by"]["chef_0"] == "human" for s in steps["coop_python"])
    monkeypatch.syspath_prepend(str(EXAMPLES / "partners"))
    agents = {"chef_0": Human().payload(), "chef_1": Bot(PythonPolicy("policies:greedy"), frame_skip=2).payload()}
    played = steps["coop_python"]
    [again] = replay_team(
        "coop_env:make",
        {"stars": 5, "max_steps": 200},
        agents,
        [(seeds["coop_python"][0], [s["actions"] for s in played])],
    )
    assert len(again) == len(played)
    for index, (step, seen) in enumerate(zip(played, again, strict=True)):
        if index % 2 == 0:  # the Python partner chose on this tick, from what it saw: the same choice in CPython
            assert seen["bot_actions"]["chef_1"] == step["actions"]["chef_1"]
