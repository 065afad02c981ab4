"""The game contract in CPython: the example environments through it, and every broken result it names."""

from __future__ import annotations

import ast
import random
import sys
import textwrap
from pathlib import Path

import pytest

from server import game_contract
from server.experiment import GymScene
from server.game_contract import ContractError, Game, check_drawing, load, replay
from server.loader import load_experiment
from tests.support import run_in_pyodide

EXAMPLES = Path(game_contract.__file__).parent / "examples"
RESET_SHAPE = r"expected \(observation, info\)"
STEP_SHAPE = r"expected \(observation, reward, terminated, truncated, info\)"
RENDER_SHAPE = r"expected a drawing \{width, height, shapes\} or an RGB image \(H×W×3\)"


@pytest.fixture
def examples(monkeypatch):
    """The example folders on sys.path, as their wheels put each environment module at the top level."""
    for name in ("gridworld", "catch", "pixels"):
        monkeypatch.syspath_prepend(str(EXAMPLES / name))


@pytest.fixture
def researcher(tmp_path, monkeypatch):
    """Write `lab/<name>.py` in a fresh folder on sys.path and return its dotted module name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "__init__.py").write_text("")

    def write(name: str, source: str) -> str:
        (tmp_path / "lab" / f"{name}.py").write_text(textwrap.dedent(source))
        return f"lab.{name}"

    yield write
    for module in [m for m in sys.modules if m == "lab" or m.startswith("lab.")]:
        del sys.modules[module]


class Env:
    """A well-behaved environment whose parts the broken ones below override."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.seed = None

    def reset(self, seed=None, options=None):
        self.seed = seed
        return [0, 0], {"seed": seed}

    def step(self, action):
        return [action, 1], -0.5, action == 9, False, {}

    def render(self):
        return {"width": 10, "height": 10, "shapes": []}


class FakeArray:
    """Enough of a numpy array (shape, dtype, tobytes, tolist) to stand for one without installing numpy."""

    def __init__(self, rows, dtype="uint8"):
        self.rows, self.dtype = rows, dtype

    @property
    def shape(self):
        shape, value = [], self.rows
        while isinstance(value, list):
            shape.append(len(value))
            value = value[0]
        return tuple(shape)

    def tolist(self):
        return self.rows

    def tobytes(self):
        flat = []

        def walk(v):
            if isinstance(v, list):
                for item in v:
                    walk(item)
            else:
                flat.append(v)

        walk(self.rows)
        return bytes(flat)


class FakeScalar:
    """A numpy scalar: not an int or bool subclass, but `.tolist()` gives the Python value."""

    def __init__(self, value):
        self.value = value

    def tolist(self):
        return self.value


def returning(value):
    return lambda self, *args, **kwargs: value


def broken(**methods) -> Game:
    """A Game over an `Env` whose named methods return the given values."""
    return Game(type("Broken", (Env,), {name: returning(value) for name, value in methods.items()})())


# The module is fetched by the browser worker and imported alone in Pyodide.


def test_contract_module_imports_only_the_standard_library():
    tree = ast.parse(Path(game_contract.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the worker imports the file on its own"
            names.add((node.module or "").split(".")[0])
    assert names - {"__future__"} <= sys.stdlib_module_names


# The examples.


def test_gridworld_reaches_the_goal_with_four_rights_and_four_downs(examples):
    game = load("gridworld_env:make", {})
    first = game.reset(0)
    assert first["observation"]["agent"] == [0, 0] and first["observation"]["walls"] == [[2, 1], [2, 2]]
    results = [game.step(a) for a in [1] * 4 + [2] * 4]
    assert [r["terminated"] for r in results] == [False] * 7 + [True]
    assert results[-1]["observation"]["agent"] == [4, 4] and results[-1]["observation"]["steps"] == 8
    assert sum(r["reward"] for r in results) == pytest.approx(0.93)
    assert game.reset(0)["observation"]["agent"] == [0, 0]
    assert game.step(0)["observation"]["agent"] == [0, 0]
    assert game.step(3)["observation"]["agent"] == [0, 0]


def test_gridworld_walls_block_a_move(examples):
    game = load("gridworld_env:make", {})
    game.reset(0)
    game.step(1)
    assert game.step(2)["observation"]["agent"] == [1, 1]
    assert game.step(1)["observation"]["agent"] == [1, 1]


def play(spec: str, kwargs: dict, seed: int, actions: list, n: int) -> list[tuple[dict, dict]]:
    game = load(spec, kwargs)
    run = [(game.reset(seed), game.frame())]
    rng = random.Random(seed)
    for _ in range(n):
        result = game.step(rng.choice(actions))
        run.append((result, game.frame()))
        if result["terminated"] or result["truncated"]:
            break
    return run


GAMES = [
    ("gridworld_env:make", {}, [0, 1, 2, 3], "drawing", 100),
    ("catch_env:make", {"balls": 5, "max_steps": 300}, [0, 1, 2], "drawing", 300),
    ("pixels_env:make", {"targets": 6, "steps": 20}, [0, 1, 2, 3, 4], "rgb", 20),
]


@pytest.mark.parametrize(("spec", "kwargs", "actions", "kind", "max_steps"), GAMES)
def test_examples_replay_exactly_and_every_frame_passes(examples, spec, kwargs, actions, kind, max_steps):
    for seed in (1, 2, 3):
        run = play(spec, kwargs, seed, actions, max_steps)
        assert run == play(spec, kwargs, seed, actions, max_steps)
        assert run[-1][0]["terminated"] or run[-1][0]["truncated"] or len(run) == max_steps + 1
        assert {frame["kind"] for _, frame in run} == {kind}
        for _, frame in run:
            if kind == "drawing":
                assert check_drawing(frame["drawing"]) == frame["drawing"]
            else:
                assert len(frame["data"]) == frame["width"] * frame["height"] * 3


def test_catch_and_pixels_take_their_layout_from_the_seed(examples):
    for spec in ("catch_env:make", "pixels_env:make"):
        game = load(spec, {})
        starts = {repr(game.reset(seed)["observation"]) for seed in range(10)}
        assert len(starts) > 1


def test_catch_ends_after_its_balls_with_a_point_for_each_catch_and_miss(examples):
    game = load("catch_env:make", {"balls": 3, "max_steps": 10_000})
    game.reset(7)
    rewards, result = [], {"terminated": False}
    while not result["terminated"]:
        result = game.step(1)
        rewards.append(result["reward"])
    assert sorted(r for r in rewards if r) in ([-1.0] * 3, [-1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0] * 3)
    assert result["info"]["caught"] + result["info"]["missed"] == 3 and not result["truncated"]
    truncated = load("catch_env:make", {"balls": 50, "max_steps": 30})
    truncated.reset(7)
    assert [truncated.step(1)["truncated"] for _ in range(30)] == [False] * 29 + [True]


def test_pixels_lights_a_target_for_a_point(examples):
    game = load("pixels_env:make", {"targets": 63, "steps": 20})
    game.reset(1)
    result = game.step(2)
    assert result["reward"] == 1.0 and result["observation"]["lit"] == [[5, 4]]
    assert game.step(0)["reward"] == 0.0
    frame = game.frame()
    assert (frame["width"], frame["height"]) == (32, 32)


def test_replay_returns_what_a_manual_run_returns(examples):
    actions = [random.Random(4).choice([0, 1, 2]) for _ in range(120)]
    game = load("catch_env:make", {"balls": 2})
    manual = []
    for seed in (11, 12):
        game.reset(seed)
        run = []
        for action in actions:
            result = game.step(action)
            run.append({k: result[k] for k in ("reward", "terminated", "truncated")})
            if result["terminated"]:
                break
        manual.append(run)
    assert replay("catch_env:make", {"balls": 2}, [(11, actions), (12, actions)]) == manual
    assert replay("gridworld_env:make", {}, [(0, [1] * 4 + [2] * 4 + [0] * 3)])[0][-1]["terminated"] is True
    assert len(replay("gridworld_env:make", {}, [(0, [1] * 4 + [2] * 4 + [0] * 3)])[0]) == 8


@pytest.mark.parametrize(
    ("folder", "scene_id", "environment", "input_"),
    [
        ("gridworld", "gridworld", "gridworld_env:make", "turn"),
        ("catch", "catch", "catch_env:make", "held"),
        ("pixels", "pixels", "pixels_env:make", "press"),
    ],
)
def test_each_example_study_loads(folder, scene_id, environment, input_):
    experiment = load_experiment(str(EXAMPLES / folder / "study.py"))
    games = [s for s in experiment.leaves() if isinstance(s, GymScene)]
    assert [(g.scene_id, g.environment, g.input, g.packages_to_install) for g in games] == [
        (scene_id, environment, input_, ())
    ]
    assert [s.scene_id for s in experiment.leaves()] == ["start", "instructions", scene_id, "end"]
    assert (EXAMPLES / folder / f"{games[0].module}.py").is_file()


def test_load_imports_a_dotted_module_and_passes_the_kwargs(researcher):
    module = researcher("envs", "from tests.test_game_contract import Env\n\ndef make(**kw):\n    return Env(**kw)\n")
    game = load(f"{module}:make", {"size": 3})
    assert game.env.kwargs == {"size": 3}
    assert game.reset(42) == {"observation": [0, 0], "info": {"seed": 42}}
    assert game.env.seed == 42


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        (
            "",
            "lab.nowhere:make",
            r"^could not import lab\.nowhere: ModuleNotFoundError: No module named 'lab\.nowhere'$",
        ),
        ("def make(:\n", "lab.envs:make", r"^could not import lab\.envs: SyntaxError: "),
        ("raise RuntimeError('no licence')\n", "lab.envs:make", r"RuntimeError: no licence$"),
        ("", "lab.envs:make", r"^module lab\.envs has no make; expected a factory for lab\.envs:make$"),
        ("make = 3\n", "lab.envs:make", r"lab\.envs:make is an int; expected a class or function"),
        (
            "def make(**kw):\n    raise ValueError('board too small')\n",
            "lab.envs:make",
            r"^make\(\*\*env_kwargs\) failed: ValueError: board too small$",
        ),
        ("", "no-colon", r"environment must be 'module:factory'"),
        (
            "class make:\n    def reset(self, seed=None): pass\n    def step(self, a): pass\n",
            "lab.envs:make",
            r"has no render\(\); expected reset\(seed=\.\.\.\), step\(action\) and render\(\)",
        ),
        (
            "class make:\n    def reset(self): pass\n    def step(self, a): pass\n    def render(self): pass\n",
            "lab.envs:make",
            r"^reset\(\) must accept a seed keyword",
        ),
    ],
)
def test_load_turns_every_failure_to_start_into_a_plain_message(researcher, source, spec, message):
    researcher("envs", source)
    with pytest.raises(ContractError, match=message):
        load(spec, {})


# Results the contract refuses, with the documented messages.


@pytest.mark.parametrize(
    ("methods", "call", "message"),
    [
        ({"reset": 3}, "reset", rf"^reset\(\) returned an int; {RESET_SHAPE}$"),
        ({"reset": [0, {}]}, "reset", rf"^reset\(\) returned a list; {RESET_SHAPE}$"),
        ({"reset": ([0], {}, 1)}, "reset", rf"^reset\(\) returned a 3-tuple; {RESET_SHAPE}$"),
        ({"step": ([0], 1.0, True, {})}, "step", rf"^step\(\) returned a 4-tuple; {STEP_SHAPE}$"),
        ({"step": None}, "step", rf"^step\(\) returned None; {STEP_SHAPE}$"),
        ({"step": ([0], "x", False, False, {})}, "step", r"^reward must be a number, got 'x'$"),
        ({"step": ([0], True, False, False, {})}, "step", r"^reward must be a number, got True$"),
        ({"step": ([0], float("nan"), False, False, {})}, "step", r"^reward must be a finite number, got nan$"),
        ({"step": ([0], 1, 1, False, {})}, "step", r"^terminated must be True or False, got 1$"),
        ({"step": ([0], 1, False, None, {})}, "step", r"^truncated must be True or False, got None$"),
        (
            {"step": ([0], 1, False, False, {"where": {1, 2}})},
            "step",
            r"^info must be plain data \(numbers, strings, lists, maps\); info\['where'\] is a set$",
        ),
        ({"step": ([0], 1, False, False, [1])}, "step", r"^info must be a dict of plain data .*, got a list$"),
        ({"reset": ([0], {1: "a"})}, "reset", r"^info must be plain data .*; info has a key 1 that is not a string$"),
        (
            {"reset": ({"pos": object()}, {})},
            "reset",
            r"^observation must be plain data .*; observation\['pos'\] is an object$",
        ),
        ({"reset": ([b"raw"], {})}, "reset", r"^observation must be plain data .*; observation\[0\] is a bytes$"),
        ({"reset": ([2**70], {})}, "reset", r"observation\[0\] is an integer wider than 64 bits"),
        ({"render": "frame"}, "frame", rf"^render\(\) returned a str; {RENDER_SHAPE}$"),
        ({"render": None}, "frame", rf"^render\(\) returned None; {RENDER_SHAPE}$"),
        ({"render": []}, "frame", r"^render\(\) returned a 0×0 image; expected an RGB image \(H×W×3\)"),
        (
            {"render": [[[0, 0, 0], [0, 0]]]},
            "frame",
            r"pixel \(1, 0\) is \[0, 0\]; expected \[r, g, b\] integers 0-255",
        ),
        ({"render": [[[0, 0, 256]]]}, "frame", r"pixel \(0, 0\) is \[0, 0, 256\]"),
        ({"render": [[[0, 0, 1.5]]]}, "frame", r"pixel \(0, 0\) is \[0, 0, 1\.5\]"),
        (
            {"render": [[[0, 0, 0]], [[0, 0, 0], [0, 0, 0]]]},
            "frame",
            r"image row 1 is not a list of 1 pixels like row 0",
        ),
        ({"render": FakeArray([[[0, 0]]])}, "frame", r"image of shape \(1, 1, 2\); expected an RGB image"),
        (
            {"render": FakeArray([[[0, 0, 0]]], dtype="float64")},
            "frame",
            r"image of float64; an RGB image must be uint8",
        ),
    ],
)
def test_broken_results_name_what_was_expected(methods, call, message):
    game = broken(**methods)
    with pytest.raises(ContractError, match=message):
        game.reset(0) if call == "reset" else game.step(1) if call == "step" else game.frame()


def test_an_exception_inside_the_environment_becomes_a_contract_error_with_its_cause():
    class Crashes(Env):
        def step(self, action):
            return {"left": 1}[action]

    with pytest.raises(ContractError, match=r"^step\(\) raised KeyError: 'right'$") as caught:
        Game(Crashes()).step("right")
    assert isinstance(caught.value.__cause__, KeyError)


def test_reset_passes_the_seed_as_a_keyword_and_wants_an_int():
    class KeywordOnly(Env):
        def reset(self, *, seed=None, options=None):
            return super().reset(seed=seed)

    assert Game(KeywordOnly()).reset(5)["info"] == {"seed": 5}
    with pytest.raises(TypeError, match="seed must be an int"):
        Game(Env()).reset("5")


# Conversions.


def test_tuples_numpy_like_values_and_subclasses_become_plain_data():
    class Sub(Env):
        def reset(self, seed=None, options=None):
            obs = {"grid": FakeArray([[1, 2], [3, 4]]), "pos": (FakeScalar(3), 4.5), "done": FakeScalar(True)}
            return obs, {"nested": [(1, None), {"ok": "yes"}]}

        def step(self, action):
            return FakeArray([7]), FakeScalar(2), FakeScalar(False), FakeScalar(True), {}

    game = Game(Sub())
    assert game.reset(0) == {
        "observation": {"grid": [[1, 2], [3, 4]], "pos": [3, 4.5], "done": True},
        "info": {"nested": [[1, None], {"ok": "yes"}]},
    }
    result = game.step(0)
    assert result == {"observation": [7], "reward": 2.0, "terminated": False, "truncated": True, "info": {}}
    assert type(result["reward"]) is float


def test_rgb_frames_from_nested_lists_and_numpy_like_arrays_give_the_same_bytes():
    rows = [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]]
    expected = {"kind": "rgb", "width": 3, "height": 2, "data": bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, *range(1, 10)])}
    assert broken(render=rows).frame() == expected
    assert broken(render=FakeArray(rows)).frame() == expected
    assert broken(render=tuple(tuple(tuple(p) for p in row) for row in rows)).frame() == expected


def test_a_self_referencing_observation_is_refused_not_looped_on():
    loop: list = []
    loop.append(loop)
    with pytest.raises(ContractError, match="nested more than 32 deep"):
        broken(reset=(loop, {})).reset(0)


# Drawings.


def test_a_drawing_comes_back_plain_with_every_default_filled_in():
    drawing = {
        "width": 100,
        "height": FakeScalar(50.0),
        "shapes": [
            {"kind": "rect", "x": 1, "y": 2, "w": 3, "h": 4},
            {"kind": "rect", "x": 1, "y": 2, "w": 3, "h": 4, "stroke": "red"},
            {"kind": "circle", "x": 5, "y": 5, "r": 2, "fill": "#0f0", "line_width": 0},
            {"kind": "line", "x1": 0, "y1": 0, "x2": 10, "y2": -10},
            {"kind": "text", "x": 50, "y": 25, "text": "score", "align": "center"},
            {"kind": "image", "x": 0, "y": 0, "w": 10, "h": 10, "asset": "ship"},
        ],
    }
    frame = broken(render=drawing).frame()
    assert frame["kind"] == "drawing"
    assert frame["drawing"] == {
        "width": 100,
        "height": 50.0,
        "background": "#fff",
        "shapes": [
            {"kind": "rect", "x": 1, "y": 2, "w": 3, "h": 4, "fill": "#000", "stroke": None, "line_width": 1},
            {"kind": "rect", "x": 1, "y": 2, "w": 3, "h": 4, "fill": None, "stroke": "red", "line_width": 1},
            {"kind": "circle", "x": 5, "y": 5, "r": 2, "fill": "#0f0", "stroke": None, "line_width": 0},
            {"kind": "line", "x1": 0, "y1": 0, "x2": 10, "y2": -10, "stroke": "#000", "line_width": 1},
            {"kind": "text", "x": 50, "y": 25, "text": "score", "size": 16, "fill": "#000", "align": "center"},
            {"kind": "image", "x": 0, "y": 0, "w": 10, "h": 10, "asset": "ship"},
        ],
    }


def shapes(*items, **extra):
    return {"width": 10, "height": 10, "shapes": list(items), **extra}


@pytest.mark.parametrize(
    ("drawing", "message"),
    [
        ({"height": 10, "shapes": []}, r"^drawing width must be a number, got None$"),
        ({"width": 0, "height": 10, "shapes": []}, r"^drawing width must be positive, got 0$"),
        ({"width": 10, "height": 10}, r"^drawing shapes must be a list, got None$"),
        (shapes(colour="red"), r"^drawing has unknown fields colour; expected width, height, background, shapes$"),
        (shapes(background=3), r"^drawing background must be a CSS colour"),
        (
            shapes({"kind": "square"}),
            r"^drawing shape 0 has kind 'square'; expected one of rect, circle, line, text, image$",
        ),
        (shapes("rect"), r"^drawing shape 0 is a str; expected a map with a kind$"),
        (shapes({"kind": "circle", "x": 1, "y": 1}), r"^drawing shape 0 \(circle\) is missing r$"),
        (
            shapes({"kind": "rect", "x": "1", "y": 1, "w": 1, "h": 1}),
            r"^drawing shape 0 \(rect\) x must be a number, got '1'$",
        ),
        (
            shapes({"kind": "rect", "x": 1, "y": 1, "w": -1, "h": 1}),
            r"^drawing shape 0 \(rect\) w must not be negative",
        ),
        (shapes({"kind": "line", "x1": 0, "y1": 0, "x2": float("inf"), "y2": 0}), r"x2 must be a number, got inf"),
        (
            shapes({"kind": "rect", "x": 1, "y": 1, "w": 1, "h": 1, "color": "red"}),
            r"unknown fields color; expected kind, x, y, w, h, fill, stroke, line_width",
        ),
        (
            shapes({"kind": "text", "x": 1, "y": 1, "text": "a", "align": "middle"}),
            r"align must be one of left, center, right, got 'middle'",
        ),
        (
            shapes({"kind": "text", "x": 1, "y": 1, "text": "a" * 1001}),
            r"text must be a string of at most 1,000 characters",
        ),
        (shapes({"kind": "text", "x": 1, "y": 1, "text": "a", "size": 0}), r"size must be positive"),
        (
            shapes({"kind": "image", "x": 0, "y": 0, "w": 1, "h": 1, "asset": "ghost"}),
            r"asset 'ghost' is not an asset the scene declares \(ship\)",
        ),
        (
            shapes(*[{"kind": "circle", "x": 0, "y": 0, "r": 1}] * 10_001),
            r"^drawing has 10,001 shapes; at most 10,000 are allowed$",
        ),
    ],
)
def test_drawings_that_break_the_format_say_where(drawing, message):
    with pytest.raises(ContractError, match=message):
        Game(type("Draws", (Env,), {"render": lambda self: drawing})(), assets=["ship"]).frame()


def test_ten_thousand_shapes_are_allowed():
    drawing = shapes(*[{"kind": "circle", "x": 0, "y": 0, "r": 1}] * 10_000)
    assert len(broken(render=drawing).frame()["drawing"]["shapes"]) == 10_000


def test_the_example_environment_in_the_docs_keeps_the_contract():
    text = (EXAMPLES.parent.parent / "docs" / "games.md").read_text()
    source = next(block for block in text.split("```python\n")[1:] if "def make" in block).split("```")[0]
    namespace: dict = {}
    exec(source, namespace)
    runs = [replay_module(namespace["make"], seed) for seed in (1, 1, 2)]
    assert runs[0] == runs[1] and len(runs[0]) == 5 and runs[0][-1]["terminated"]


def replay_module(make, seed: int) -> list[dict]:
    game = Game(make())
    game.reset(seed)
    assert game.frame()["kind"] == "drawing"
    return [game.step(a % 2) for a in range(5)]


REPLAYED = [
    ("catch_env:make", {"balls": 3}, 7, [i % 3 for i in range(300)]),
    ("pixels_env:make", {}, 3, [1, 2, 3, 4] * 5),
]


def test_the_contract_runs_in_pyodide_and_replays_as_cpython_does(examples, tmp_path):
    """The page's Pyodide (under Node here) must give the same steps and pixels as the CPython that checks an export."""
    files = [(str(Path(game_contract.__file__)), "game_contract.py")] + [
        (str(EXAMPLES / folder / f"{folder}_env.py"), f"{folder}_env.py") for folder in ("gridworld", "catch", "pixels")
    ]
    code = (
        "import sys, json; sys.path.insert(0, '/home/pyodide'); import game_contract as gc\n"
        f"runs = [gc.replay(spec, kwargs, [(seed, actions)]) for spec, kwargs, seed, actions in {REPLAYED!r}]\n"
        "game = gc.load('pixels_env:make', {}); game.reset(3); frame = game.frame()\n"
        "json.dumps({'runs': runs, 'frame': frame['data'].hex()})"
    )
    pyodide = run_in_pyodide(tmp_path, files, code)
    game = load("pixels_env:make", {})
    game.reset(3)
    assert pyodide["frame"] == game.frame()["data"].hex()
    assert pyodide["runs"] == [replay(spec, kwargs, [(seed, actions)]) for spec, kwargs, seed, actions in REPLAYED]
