"""The experiment model: wrappers, per-participant orders, the preload config."""

from __future__ import annotations

import copy

import pytest

from server.agents import Bot, Human, OnnxPolicy, PythonPolicy, RandomPolicy
from server.experiment import (
    EndScene,
    Experiment,
    GymScene,
    RandomizeOrder,
    RepeatScene,
    ScreeningRules,
    StartScene,
    StaticScene,
)
from server.loader import ExperimentError, load_experiment
from server.multiplayer import Multiplayer

A, B, C = (StaticScene(x, f"<p>{x}</p>") for x in "abc")
GAME = GymScene("game", "env:Make", packages_to_install=("zeta", "alpha"))
OTHER = GymScene("other", "env:Other", packages_to_install=("alpha", "beta"))


def make(*middle) -> Experiment:
    return Experiment("t", [StartScene(), *middle, EndScene()])


def test_nested_wrappers_unfold_into_one_order_per_seed():
    exp = make(RandomizeOrder([A, RepeatScene(GAME, 2), RandomizeOrder([B, C], keep_n=1)]))
    orders = {tuple(p.instance_id for p in exp.plan(seed)) for seed in range(50)}
    assert all(o[0] == "start" and o[-1] == "end" and len(o) == 6 for o in orders)
    assert all(("game" in o and "game#2" in o) for o in orders)
    assert all(("b" in o) != ("c" in o) for o in orders)
    assert len(orders) > 1
    assert exp.plan(7) == exp.plan(7)


def test_pyodide_config_sees_games_inside_nested_wrappers():
    exp = make(RandomizeOrder([A, RepeatScene(RandomizeOrder([GAME, OTHER], keep_n=1), 3)]))
    assert exp.pyodide_config == {"needs_pyodide": True, "packages_to_install": ["alpha", "beta", "zeta"]}
    assert make(GAME).pyodide_config == {"needs_pyodide": True, "packages_to_install": ["alpha", "zeta"]}
    assert make(A).pyodide_config == {"needs_pyodide": False, "packages_to_install": []}
    with pytest.raises(ValueError, match="games run in the participant's page"):
        GymScene("plain", "env:Make", run_through_pyodide=False, packages_to_install=("x",))


def test_planning_leaves_the_shared_definition_untouched():
    exp = make(RandomizeOrder([A, B, C]), RepeatScene(GAME, 2))
    before = copy.deepcopy(exp.describe())
    for seed in range(20):
        exp.plan(seed)
    assert exp.describe() == before
    assert exp.scenes[1].scenes == (A, B, C)


@pytest.mark.parametrize(
    "build, problem",
    [
        (lambda: Experiment("t", [StaticScene("a", ""), EndScene()]), "begin with a StartScene"),
        (lambda: Experiment("t", [StartScene(), A]), "end with an EndScene"),
        (lambda: make(RepeatScene(StartScene("again"), 1)), "exactly one StartScene"),
        (lambda: make("not a scene"), "not a scene"),
        (lambda: make(StaticScene("a", "x"), StaticScene("a", "y")), "scene ids used by different scenes: a"),
        (lambda: RandomizeOrder([A, B], keep_n=3), "keep_n must be between 1 and 2"),
        (lambda: RepeatScene(A, 0), "times must be at least 1"),
        (lambda: GymScene("g", "no-colon"), "module:factory"),
        (lambda: GymScene("g", "env:make", fps="10"), "fps must be a whole number of at least 1, got '10'"),
        (lambda: GymScene("g", "env:make", episodes=0), "episodes must be a whole number of at least 1, got 0"),
        (lambda: GymScene("g", "env:make", time_limit_s="60"), "time_limit_s must be a positive number"),
        (lambda: make(StaticScene("", "x")), "scene ids are non-empty text, got ''"),
        (lambda: make(StaticScene("a", None)), "scene 'a': html must be text"),
        (lambda: ScreeningRules(browsers=("chrome", "netscape")), "browsers are among .*; got 'netscape'"),
        (lambda: ScreeningRules(browsers="chrome"), "browsers is a list of names, got 'chrome'"),
        (lambda: ScreeningRules(min_width="1024"), "min_width is a whole number of pixels, got '1024'"),
        (lambda: ScreeningRules(max_rtt_ms=0), "max_rtt_ms is a positive number"),
        (lambda: ScreeningRules(allow_mobile="no"), "allow_mobile is True or False"),
        (lambda: EndScene(redirect_url="javascript:alert(1)"), "redirect_url is an http"),
        (lambda: EndScene(completion_code=1234), "completion_code is text, got 1234"),
        (lambda: Experiment(" ", [StartScene(), EndScene()]), "the name is non-empty text"),
        (lambda: Experiment("t", [StartScene(), EndScene()], screening=None), "screening must be a ScreeningRules"),
        (lambda: RandomizeOrder([]), "at least one scene"),
        (lambda: RepeatScene(A, "2"), "times must be at least 1, got '2'"),
        (lambda: GymScene("g", "env:make", keys="wasd"), "keys is a map"),
        (lambda: Human(keys="wasd"), "keys map key names to actions"),
        (lambda: Multiplayer(wait_timeout_s="30"), "wait_timeout_s must be a positive number of seconds, got '30'"),
        (lambda: Multiplayer(end_code=5), "end_code is text"),
        (lambda: Multiplayer(hash_every=True), "hash_every must be a positive integer, got True"),
        (lambda: Bot(RandomPolicy(), frame_skip="2"), "frame_skip must be a whole number of at least 1, got '2'"),
        (lambda: OnnxPolicy("m.onnx", temperature="1"), "temperature must be positive, got '1'"),
        (lambda: OnnxPolicy(5), "the model path is text"),
        (lambda: PythonPolicy(5), "give 'module:function', got 5"),
    ],
)
def test_bad_definitions_say_what_is_wrong(build, problem):
    with pytest.raises((ValueError, TypeError), match=problem):
        build()


CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1"
GOOD = {"screen_width": 1920, "screen_height": 1080, "webassembly": True}


@pytest.mark.parametrize(
    "ua, facts, rtt, reasons",
    [
        (CHROME, GOOD, 20.0, ()),
        (FIREFOX, GOOD, 20.0, ("browser:firefox",)),
        (IPHONE, GOOD, 20.0, ("browser:safari", "mobile")),
        (CHROME, {**GOOD, "screen_width": 800}, 20.0, ("screen_too_small",)),
        (CHROME, {**GOOD, "webassembly": False}, 20.0, ("no_webassembly",)),
        (CHROME, GOOD, 900.0, ("rtt_too_high",)),
        (CHROME, GOOD, None, ("rtt_unmeasured",)),
    ],
)
def test_screening_rules_are_judged_from_facts_header_and_measured_rtt(ua, facts, rtt, reasons):
    rules = ScreeningRules(browsers=("chrome",), allow_mobile=False, min_width=1024, min_height=700, max_rtt_ms=500)
    assert rules.evaluate(facts, ua, rtt) == reasons


def test_the_loader_names_the_problem(tmp_path):
    assert load_experiment().name == "gridworld-example"
    with pytest.raises(ExperimentError, match="experiment file not found"):
        load_experiment(str(tmp_path / "missing.py"))
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(ExperimentError, match="defines no 'experiment'"):
        load_experiment(str(tmp_path / "none.py"))
    (tmp_path / "wrong.py").write_text("experiment = 3\n")
    with pytest.raises(ExperimentError, match="is a int, not an Experiment"):
        load_experiment(str(tmp_path / "wrong.py"))
    (tmp_path / "broken.py").write_text("from server.experiment import *\nexperiment = Experiment('x', [])\n")
    with pytest.raises(ExperimentError, match="ValueError: experiment 'x' must begin with a StartScene"):
        load_experiment(str(tmp_path / "broken.py"))
    with pytest.raises(ExperimentError, match=r"no experiment module named 'no\.such\.module'"):
        load_experiment("no.such.module")
