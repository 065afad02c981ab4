"""AI partners: multi-agent games where Python, seeded random and ONNX policies play beside the participant.

Models are built here with the `onnx` package (one MatMul and one Add, fixed weights). CPython checks what the
page recorded: onnxruntime on the replayed observations gives the ONNX bot's actions, and the same seed gives
the Python and random bots' actions. Start-up refuses missing models, wrong input sizes and unresolved policies.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import onnx
import onnxruntime
import pytest

from client.harness import ROOT, free_port, records_of, served
from server.agents import Bot, Human, OnnxPolicy, PythonPolicy, RandomPolicy
from server.examples.partners.make_model import build
from server.experiment import GymScene
from server.export import export
from server.game_contract import ContractError, Team, replay_team, sample
from server.loader import load_study
from server.partners import resolve_models

EXAMPLE = ROOT / "server" / "examples" / "partners"
LOAD_TIMEOUT_MS = 90_000
# Not the example's weights: a model that prefers moving right and down, so its actions differ from greedy's.
WEIGHTS = [[0.3, -0.2, 0.1, 0.5, 0.0], [0.0, 0.4, -0.3, 0.2, 0.1]] + [
    [0.1 * (i - j) for j in range(5)] for i in range(4)
]
BIAS = [0.0, 0.05, -0.05, 0.1, 0.0]
STUDY = """\
from server.agents import Bot, Human, OnnxPolicy, PythonPolicy, RandomPolicy
from server.experiment import EndScene, Experiment, GymScene, StartScene

KEYS = {{"ArrowUp": 0, "ArrowDown": 1, "ArrowLeft": 2, "ArrowRight": 3}}
experiment = Experiment(
    name="partners-test",
    scenes=[
        StartScene(),
        {scenes}
        EndScene(completion_code="DONE"),
    ],
)
"""
ONNX_SCENE = """GymScene("with_model", "coop_env:make", env_kwargs={"stars": 3, "max_steps": 40}, fps=30,
            max_steps=40, agents={"chef_0": Human(keys=KEYS, default_action=4),
            "chef_1": Bot(OnnxPolicy("models/partner.onnx", input_size=%s), frame_skip=2, record_policy=True)}),"""
SOFTMAX_SCENE = """GymScene("sampled", "coop_env:make", env_kwargs={"stars": 3, "max_steps": 30}, fps=30,
            max_steps=30, agents={"chef_0": Human(keys=KEYS, default_action=4),
            "chef_1": Bot(OnnxPolicy("models/partner.onnx", sample="softmax", temperature=0.05))}),"""
BOTS_SCENE = """GymScene("two_bots", "coop_env:make", env_kwargs={"stars": 2, "max_steps": 30}, fps=30, episodes=2,
            max_steps=30, agents={"chef_0": Bot(RandomPolicy()), "chef_1": Bot(PythonPolicy("policies:greedy"))}),"""
BROKEN_SCENE = """GymScene("broken", "coop_env:make", fps=30, max_steps=30,
            agents={"chef_0": Human(keys=KEYS), "chef_1": Bot(PythonPolicy("policies:broken"), frame_skip=3)}),"""
BROKEN_POLICY = "\n\ndef broken(observation, agent_id, rng):\n    raise RuntimeError('the partner tripped')\n"


def write_study(directory: Path, *scenes: str, input_size: int = 6, policies: str = BROKEN_POLICY) -> Path:
    """The coop environment and policies beside a study.py with `scenes`, and a model built here."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "coop_env.py", directory)
    (directory / "policies.py").write_text((EXAMPLE / "policies.py").read_text() + policies)
    (directory / "models").mkdir(exist_ok=True)
    onnx.save(build(WEIGHTS, BIAS), directory / "models" / "partner.onnx")
    body = "\n        ".join(s % input_size if "%s" in s else s for s in scenes)
    (directory / "study.py").write_text(STUDY.format(scenes=body))
    return directory / "study.py"


def start(study: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "server", "--port", str(free_port()), "--experiment", str(study)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)


def scores_in_cpython(model: Path, observation: list[float]) -> list[float]:
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    [out] = session.run(None, {"observation": [observation]})
    return [float(v) for v in out[0]]


# -- the scene and the contract in CPython ------------------------------------------------------------------------


def test_a_scene_with_agents_takes_its_keys_from_the_human_and_checks_its_agents():
    scene = GymScene(
        "coop",
        "coop_env:make",
        agents={"a": Human(keys={"ArrowUp": 0}, default_action=4), "b": Bot(PythonPolicy("policies:greedy"))},
    )
    payload = scene.payload()
    assert payload["keys"] == {"ArrowUp": 0} and payload["default_action"] == 4
    assert payload["agents"]["b"] == {
        "kind": "bot",
        "policy": {"kind": "python", "spec": "policies:greedy"},
        "frame_skip": 1,
        "record_policy": False,
    }
    assert scene.modules == ("coop_env", "policies")
    assert GymScene("solo", "catch_env:make").payload()["agents"] is None
    with pytest.raises(ValueError, match="at most one Human agent"):
        GymScene("x", "e:m", agents={"a": Human(), "b": Human()})
    with pytest.raises(ValueError, match="give the keys and default_action to the Human agent"):
        GymScene("x", "e:m", keys={"a": 1}, agents={"a": Human()})
    with pytest.raises(ValueError, match="give the keys and default_action to the Human agent"):
        GymScene("x", "e:m", default_action=2, agents={"a": Human()})
    with pytest.raises(ValueError, match="input_size must be a positive integer"):
        OnnxPolicy("m.onnx", input_size=0)


def test_the_same_seed_gives_the_same_python_and_random_bot_actions(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    agents = {"chef_0": Bot(RandomPolicy()).payload(), "chef_1": Bot(PythonPolicy("policies:greedy")).payload()}
    steps = [{"chef_0": 4, "chef_1": 4}] * 25

    def bots(seed: int) -> list[dict]:
        return [s["bot_actions"] for s in replay_team("coop_env:make", {}, agents, [(seed, steps)])[0]]

    assert bots(11) == bots(11)
    assert bots(11) != bots(12)
    as_declared = {"chef_0": Bot(RandomPolicy()), "chef_1": Bot(PythonPolicy("policies:greedy"))}  # as GymScene takes
    assert [s["bot_actions"] for s in replay_team("coop_env:make", {}, as_declared, [(11, steps)])[0]] == bots(11)
    assert {a["chef_0"] for a in bots(11)} <= set(range(5)) and len({a["chef_0"] for a in bots(11)}) > 1


def test_sampling_takes_the_first_best_score_or_draws_with_the_seeded_rng():
    chosen = sample([0.1, 2.0, 2.0], "argmax", 1.0, random.Random(0))
    assert chosen["action"] == 1 and math.isclose(sum(chosen["probs"]), 1.0)
    draws = [sample([0.0, 1.0, 0.0], "softmax", 0.5, random.Random(seed))["action"] for seed in range(50)]
    assert draws == [sample([0.0, 1.0, 0.0], "softmax", 0.5, random.Random(seed))["action"] for seed in range(50)]
    assert set(draws) == {0, 1, 2}
    with pytest.raises(ContractError, match="one finite score per action"):
        sample([math.nan], "argmax", 1.0, random.Random(0))


def test_a_multi_agent_step_must_answer_for_every_agent(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import coop_env

    class Forgetful(coop_env.Coop):
        def step(self, actions):
            observations, _rewards, terminations, truncations, infos = super().step(actions)
            return observations, {"chef_0": 1.0}, terminations, truncations, infos

    team = Team(Forgetful(), {"chef_0": Human().payload(), "chef_1": Human().payload()})
    team.reset(1)
    with pytest.raises(ContractError, match="step\\(\\) rewards has no entry for agent chef_1"):
        team.step({"chef_0": 4, "chef_1": 4})
    with pytest.raises(ContractError) as raised:  # a policy's bad action: the message shows whose it was
        team.step({"chef_0": 4, "chef_1": "left"})
    assert str(raised.value).endswith("(the actions: {'chef_0': 4, 'chef_1': 'left'})")


# -- start-up ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing model", "scene 'with_model', agent 'chef_1': model file models/partner.onnx not found beside"),
        (
            "wrong input size",
            "model models/partner.onnx takes 6 inputs (observation), but the policy declares input_size=7",
        ),
        ("not a model", "models/partner.onnx is not a usable ONNX model"),
        ("unresolved policy", "scene 'broken': policy module 'policies' not found: put policies.py beside study.py"),
        (
            "missing function",
            "scene 'broken', agent 'chef_1': policy policies:broken not found: policies.py defines no broken",
        ),
    ],
)
def test_each_partner_problem_stops_the_server_in_one_line(tmp_path, case, expected):
    scene = BROKEN_SCENE if case in ("unresolved policy", "missing function") else ONNX_SCENE
    policies = "" if case == "missing function" else BROKEN_POLICY
    study = write_study(tmp_path, scene, input_size=7 if case == "wrong input size" else 6, policies=policies)
    if case == "missing model":
        (tmp_path / "models" / "partner.onnx").unlink()
    elif case == "not a model":
        (tmp_path / "models" / "partner.onnx").write_bytes(b"not a model")
    elif case == "unresolved policy":
        (tmp_path / "policies.py").unlink()
    run = start(study)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith("python -m server: error: ") and expected in line


# -- in the browser ------------------------------------------------------------------------------------------------


def test_a_human_plays_with_onnx_python_and_random_partners_in_the_worker(tmp_path, browser, monkeypatch):
    study = write_study(tmp_path / "study", ONNX_SCENE, SOFTMAX_SCENE, BOTS_SCENE, BROKEN_SCENE)
    model = tmp_path / "study" / "models" / "partner.onnx"
    data = tmp_path / "data"
    with served(data, "--experiment", str(study)) as url:
        digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
        with urllib.request.urlopen(f"{url}models/{digest}/partner.onnx") as response:
            assert response.read() == model.read_bytes()
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        context = browser.new_context()
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        try:
            page = context.new_page()
            page.goto(url + "?PROLIFIC_PID=partners")
            page.wait_for_function("window.__preflight.state?.may_advance === true", timeout=LOAD_TIMEOUT_MS)
            for scene in (
                "with_model",
                "sampled",
                "two_bots",
            ):  # no key is pressed: the human's default action, the bots play
                page.click("#advance")
                page.wait_for_function(
                    f"window.__preflight.state?.scene_id === '{scene}' && window.__preflight.state?.state === 'ready'",
                    timeout=30_000,
                )
            page.click("#advance")
            page.wait_for_function("document.body.innerText.includes('The game could not run')", timeout=30_000)
            notice = page.inner_text("body")
        finally:
            context.close()
    assert not [u for u in requests if not u.startswith(url) and not u.startswith("data:")]
    assert f"{url}models/{digest}/partner.onnx" in requests
    assert any(u.startswith(f"{url}vendor/onnxruntime/") and u.endswith(".wasm") for u in requests)

    records = records_of(data, "partners")
    stages = list(dict.fromkeys(r.get("stage", r["status"]) for r in records if r["kind"] == "preload"))
    assert stages == ["runtime", "packages", "models", "preparing", "ready"]  # the wheels unpacked, no micropip
    seeds = {r["scene_id"]: r["seeds"] for r in records if r["kind"] == "scene" and r.get("seeds")}
    steps: dict[str, list[dict]] = {}
    for record in records:
        if record["kind"] == "steps":
            steps.setdefault(record["scene_id"], []).extend(record["steps"])

    # The ONNX bot: onnxruntime in CPython, on the observations the environment replays to, chose the same actions.
    played = steps["with_model"]
    assert all(s["by"] == {"chef_0": "default", "chef_1": "bot"} for s in played)
    agents = {"chef_0": Human().payload(), "chef_1": Human().payload()}
    monkeypatch.syspath_prepend(str(study.parent))
    [replayed] = replay_team(
        "coop_env:make",
        {"stars": 3, "max_steps": 40},
        agents,
        [(seeds["with_model"][0], [s["actions"] for s in played])],
    )
    assert len(replayed) == len(played) > 2
    for index, (step, seen) in enumerate(zip(played, replayed, strict=True)):
        if index % 2 == 0:
            scores = scores_in_cpython(model, seen["observations"]["chef_1"])
            assert step["actions"]["chef_1"] == scores.index(max(scores))
            assert step["probs"]["chef_1"] == pytest.approx(
                sample(scores, "argmax", 1.0, random.Random(0))["probs"], abs=1e-5
            )
        else:
            assert step["actions"]["chef_1"] == played[index - 1]["actions"]["chef_1"]  # frame_skip=2 repeats it
    assert all(isinstance(s["bot_ms"], (int, float)) for s in played)

    # Sampled from softmax(scores / 0.05) with the agent's rng, seeded from the episode's seed: the same draws here.
    drawn = steps["sampled"]
    seed = seeds["sampled"][0]
    [replayed] = replay_team(
        "coop_env:make", {"stars": 3, "max_steps": 30}, agents, [(seed, [s["actions"] for s in drawn])]
    )
    rng = random.Random(f"{seed}:chef_1")
    expected = [
        sample(scores_in_cpython(model, seen["observations"]["chef_1"]), "softmax", 0.05, rng)["action"]
        for seen in replayed
    ]
    assert [s["actions"]["chef_1"] for s in drawn] == expected
    assert "probs" not in drawn[0]  # recorded only with record_policy=True
    [summary] = [r["data"] for r in records if r["kind"] == "game_over" and r.get("scene_id") == "with_model"]
    assert summary["steps"] == len(played) and summary["bot_ms_max"] == pytest.approx(max(s["bot_ms"] for s in played))
    assert isinstance(summary["slow_bot_ticks"], int)

    # The Python and the seeded random bot: the recorded seed gives their actions again in CPython.
    two = steps["two_bots"]
    bots = {"chef_0": Bot(RandomPolicy()).payload(), "chef_1": Bot(PythonPolicy("policies:greedy")).payload()}
    episodes = [(seed, [s["actions"] for s in two if s["episode"] == e]) for e, seed in enumerate(seeds["two_bots"])]
    runs = replay_team("coop_env:make", {"stars": 2, "max_steps": 30}, bots, episodes)
    assert [s["bot_actions"] for run in runs for s in run] == [s["actions"] for s in two]
    assert all(s["by"] == {"chef_0": "bot", "chef_1": "bot"} for s in two)

    # A bot that throws: a plain message for the participant, the game over as failed, the reason recorded.
    reason = (
        "the AI partner (chef_1) failed: policy policies:broken (agent chef_1) raised RuntimeError: the partner tripped"
    )
    assert reason in notice
    [over] = [r for r in records if r["kind"] == "game_over" and r.get("scene_id") == "broken"]
    assert over["data"]["failed"] is True and over["data"]["error"] == reason

    # The export keeps one row per step, the agents in JSON map columns.
    export(data, "jsonl", tmp_path / "export")
    [person] = [json.loads(line) for line in (tmp_path / "export" / "participants.jsonl").read_text().splitlines()]
    assert person["failed_games"] == [{"scene_id": "broken", "error": reason}]
    rows = [json.loads(line) for line in (tmp_path / "export" / "steps.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r["scene_id"] == "with_model")
    assert first["actions"] == played[0]["actions"] and first["by"] == {"chef_0": "default", "chef_1": "bot"}
    assert set(first["probs"]) == {"chef_1"} and set(first["rewards"]) == {"chef_0", "chef_1"}


def test_the_example_study_starts_and_its_model_is_what_make_model_writes():
    source = load_study(str(EXAMPLE / "study.py"))
    models = resolve_models(source.experiment, source.file)
    assert [(m.path, m.input_name, m.input_size, m.outputs) for m in models.values()] == [
        ("models/partner.onnx", "observation", 6, 5)
    ]
    assert onnx.load(EXAMPLE / "models" / "partner.onnx").SerializeToString() == build().SerializeToString()
