"""A researcher's own game: local modules packed at start-up, binary packages from a full Pyodide
distribution, and the start-up check that names what a scene is missing.

Everything is real files in tmp_path; where the command line is the subject, `python -m server` runs.
The one browser test serves a fabricated full distribution (the npm core plus a wheel of our own in
its lock, the path numpy takes) and checks the page loads it with `pyodide.loadPackage`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from client.harness import ROOT, free_port, served
from client.participant import ProtocolClient
from server.experiment import EndScene, Experiment, GymScene, StartScene
from server.loader import load_study
from server.packages import (
    LOCAL_URL,
    build_local_wheel,
    check_local_sources,
    resolve_packages,
    wheel_contents,
)
from server.runtime import DEFAULT_PYODIDE_DIR, DEFAULT_WHEELHOUSE, RuntimeSetupError, load_runtime
from server.store import read_records

CORE_VERSION = json.loads((DEFAULT_PYODIDE_DIR / "package.json").read_text())["version"]
MICROPIP = next(DEFAULT_WHEELHOUSE.glob("micropip-*.whl"))
CATCH_ENV = """\
import fabricated_numeric


class Catch:
    def reset(self, seed=None):
        return {"value": 0}, {}

    def step(self, action):
        return {"value": fabricated_numeric.double(21)}, 1.0, True, False, {}

    def render(self):
        return {"width": 10, "height": 10, "shapes": [{"kind": "text", "x": 1, "y": 5, "text": "42"}]}


def make():
    return Catch()
"""


def make_wheel(directory: Path, name: str, version: str, files: dict[str, str], requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel written with zipfile, as a package index would hold it."""
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    content = {
        **{k: v.encode() for k, v in files.items()},
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},{len(v)}\n"
        for k, v in content.items()
    )
    content[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for k, v in content.items():
            archive.writestr(k, v)
    return path


def write_study(
    directory: Path, *, environment: str = "catch_env:make", packages: tuple[str, ...] = (), **extra
) -> Path:
    """`study.py` with one game scene `catch`; `extra` adds GymScene arguments as source text."""
    directory.mkdir(parents=True, exist_ok=True)
    arguments = "".join(f", {k}={v}" for k, v in extra.items())
    path = directory / "study.py"
    path.write_text(
        "from server.experiment import EndScene, Experiment, GymScene, StartScene\n\n"
        "experiment = Experiment(\n"
        '    name="catch",\n'
        f"    scenes=[StartScene(), GymScene('catch', {environment!r}, packages_to_install={packages!r}{arguments}),"
        " EndScene()],\n"
        ")\n"
    )
    return path


def fabricated_distribution(directory: Path, *, core: bool = False, depends: tuple[str, ...] = ()) -> Path:
    """A Pyodide distribution like the full release: the npm core's files (real copies when `core`, else stand-ins)
    and its lock, plus `fabricated_numeric`, a wheel of our own that the lock names as numpy is named."""
    directory.mkdir(parents=True)
    for source in DEFAULT_PYODIDE_DIR.iterdir():
        if source.name == "pyodide-lock.json":
            continue
        if core or source.name == "package.json":
            shutil.copyfile(source, directory / source.name)
        elif source.name == "pyodide.mjs":
            (directory / source.name).write_text("// a stand-in: this distribution is not loaded in a browser\n")
    wheel = make_wheel(directory, "fabricated_numeric", "1.0.0", {"fabricated_numeric/__init__.py": DOUBLE})
    lock = json.loads((DEFAULT_PYODIDE_DIR / "pyodide-lock.json").read_text())
    lock["packages"]["fabricated-numeric"] = {
        "name": "fabricated_numeric",
        "version": "1.0.0",
        "file_name": wheel.name,
        "install_dir": "site",
        "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "package_type": "package",
        "imports": ["fabricated_numeric"],
        "depends": list(depends),
        "unvendored_tests": False,
    }
    (directory / "pyodide-lock.json").write_text(json.dumps(lock))
    return directory


DOUBLE = "def double(x):\n    return 2 * x\n"


def start(*flags: str) -> subprocess.CompletedProcess:
    """`python -m server` expected to stop at start-up; a server that starts instead fails on the timeout."""
    command = [sys.executable, "-m", "server", "--port", str(free_port()), *flags]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)


# -- local modules ---------------------------------------------------------------------------------------------


def test_a_local_module_becomes_a_wheel_that_pip_installs_and_the_same_content_the_same_bytes(tmp_path):
    (tmp_path / "catch_env.py").write_text(DOUBLE)
    wheel = build_local_wheel("catch_env", tmp_path / "catch_env.py", tmp_path / "cache")
    assert wheel.project == "preflight-local-catch-env"
    assert re.fullmatch(r"preflight_local_catch_env-0\.0\.0\+[0-9a-f]{12}-py3-none-any\.whl", wheel.filename)
    assert wheel.url == LOCAL_URL + wheel.filename and wheel.path == tmp_path / "cache" / wheel.filename
    assert wheel.sha256 == hashlib.sha256(wheel.path.read_bytes()).hexdigest()
    again = build_local_wheel("catch_env", tmp_path / "catch_env.py", tmp_path / "elsewhere")
    assert again.filename == wheel.filename and again.path.read_bytes() == wheel.path.read_bytes()

    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(target)]
    subprocess.run([*pip, str(wheel.path)], check=True, capture_output=True, timeout=60)
    check = (
        "import importlib.metadata as m, catch_env; print(m.version('preflight-local-catch-env'), catch_env.double(4))"
    )
    out = subprocess.run([sys.executable, "-c", check], cwd=target, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [wheel.version, "8"]
    assert wheel_contents(wheel.path).modules == {"catch_env"}


def test_a_package_folder_is_packed_whole_without_caches_or_hidden_files(tmp_path):
    package = tmp_path / "catch_env"
    (package / "levels").mkdir(parents=True)
    (package / "__pycache__").mkdir()
    (package / "__init__.py").write_text("from .rules import make\n")
    (package / "rules.py").write_text("def make():\n    return None\n")
    (package / "levels" / "one.json").write_text("[1, 2]")
    (package / "__pycache__" / "rules.cpython-314.pyc").write_bytes(b"\0")
    (package / ".notes").write_text("private")
    wheel = build_local_wheel("catch_env", package, tmp_path / "cache")
    names = zipfile.ZipFile(wheel.path).namelist()
    dist_info = wheel.filename.removesuffix("-py3-none-any.whl") + ".dist-info"
    assert names == [
        "catch_env/__init__.py",
        "catch_env/levels/one.json",
        "catch_env/rules.py",
        f"{dist_info}/METADATA",
        f"{dist_info}/WHEEL",
        f"{dist_info}/top_level.txt",
        f"{dist_info}/RECORD",
    ]


def test_the_cached_wheel_is_reused_until_the_module_changes(tmp_path):
    study = write_study(tmp_path / "study")
    (study.parent / "catch_env.py").write_text("def make():\n    return None\n")
    runtime = load_runtime(DEFAULT_PYODIDE_DIR, DEFAULT_WHEELHOUSE)
    source = load_study(str(study))
    first = resolve_packages(source.experiment, source.file, runtime)
    [wheel] = first.local
    assert first.cache == study.parent / ".preflight" / "wheels"
    assert first.packages_to_install == ("preflight-local-catch-env",) and first.pyodide_packages == ()
    written = wheel.path.stat().st_mtime_ns
    assert resolve_packages(source.experiment, source.file, runtime).local == (wheel,)
    assert wheel.path.stat().st_mtime_ns == written

    (study.parent / "catch_env.py").write_text("def make():\n    return 1\n")
    [changed] = resolve_packages(source.experiment, source.file, runtime).local
    assert changed.filename != wheel.filename
    assert sorted(p.name for p in first.cache.iterdir()) == [changed.filename]


def test_the_server_serves_local_wheels_in_its_index_and_tells_the_page_to_install_them(tmp_path):
    study = write_study(tmp_path / "study", environment="catch_env.rules:make")
    (study.parent / "catch_env").mkdir()
    (study.parent / "catch_env" / "__init__.py").write_text("")
    (study.parent / "catch_env" / "rules.py").write_text("def make():\n    return None\n")
    with served(tmp_path / "data", "--experiment", str(study)) as url:
        request = urllib.request.Request(
            url + "simple/preflight-local-catch-env/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            [listed] = json.load(response)["files"]
        [on_disk] = (study.parent / ".preflight" / "wheels").glob("*.whl")
        assert listed["filename"] == on_disk.name
        assert listed["hashes"]["sha256"] == hashlib.sha256(on_disk.read_bytes()).hexdigest()
        assert listed["url"] == f"{url}local-wheels/{on_disk.name}"
        with urllib.request.urlopen(listed["url"], timeout=10) as response:
            assert response.read() == on_disk.read_bytes()
            assert "immutable" in response.headers["Cache-Control"]

        async def config() -> dict:
            client = await ProtocolClient.connect(url.replace("http", "ws") + "ws", timeout=10)
            await client.send({"type": "hello", "participant_id": "p1"})
            sent = (await client.until_type("experiment_config"))["pyodide_config"]
            client.close()
            while await client.conn.read_message() is not None:  # the closing handshake, so the socket is closed
                pass
            return sent

        pyodide_config = asyncio.run(config())
    assert pyodide_config["packages_to_install"] == ["preflight-local-catch-env"]
    assert pyodide_config["pyodide_packages"] == []


# -- what the page loads from where ------------------------------------------------------------------------------


def test_a_distribution_without_micropip_gets_a_lock_that_keeps_its_own_packages(tmp_path):
    dist = fabricated_distribution(tmp_path / "dist")
    runtime = load_runtime(dist, DEFAULT_WHEELHOUSE)
    assert runtime.lock is not None
    packages = runtime.lock["packages"]
    assert sorted(packages) == ["fabricated-numeric", "micropip"]  # what the npm core lock names but lacks is left out
    assert (
        packages["fabricated-numeric"]["file_name"]
        == f"/pyodide/{CORE_VERSION}/fabricated_numeric-1.0.0-py3-none-any.whl"
    )
    assert packages["micropip"]["file_name"] == MICROPIP.name  # relative to wheel_base_url, the wheelhouse
    assert runtime.page_config()["wheel_base_url"] == "/wheels/"
    assert "numpy" in runtime.unshipped and "fabricated-numeric" not in runtime.unshipped

    core = load_runtime(DEFAULT_PYODIDE_DIR, DEFAULT_WHEELHOUSE)
    assert core.lock is not None and list(core.lock["packages"]) == ["micropip"]


def test_lock_packages_load_from_the_distribution_and_the_rest_from_the_index(tmp_path):
    dist = fabricated_distribution(tmp_path / "dist")
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    shutil.copy(MICROPIP, wheelhouse)
    make_wheel(
        wheelhouse,
        "scorer",
        "2.0",
        {"scorer.py": "import fabricated_numeric\n"},
        requires=("fabricated-numeric>=1", "sphinx; extra == 'docs'", "pywin32; sys_platform == 'win32'"),
    )
    study = write_study(tmp_path / "study", packages=("fabricated-numeric", "scorer"))
    (study.parent / "catch_env.py").write_text(CATCH_ENV)
    source = load_study(str(study))
    packages = resolve_packages(source.experiment, source.file, load_runtime(dist, wheelhouse))
    assert packages.pyodide_packages == ("fabricated_numeric",)
    assert packages.packages_to_install == ("preflight-local-catch-env", "scorer")

    # The environment module may come from a wheel's files or a lock entry's `imports`, not only from beside study.py.
    for environment, listed in (("scorer:make", ("scorer",)), ("fabricated_numeric:double", ("fabricated-numeric",))):
        other = load_study(
            str(write_study(tmp_path / environment.split(":")[0], environment=environment, packages=listed))
        )
        resolve_packages(other.experiment, other.file, load_runtime(dist, wheelhouse))


def test_with_a_distribution_hosted_elsewhere_what_the_wheelhouse_lacks_is_left_to_its_lock(tmp_path):
    study = write_study(tmp_path / "study", environment="numpy:array", packages=("numpy", "packaging"))
    source = load_study(str(study))
    runtime = load_runtime(None, DEFAULT_WHEELHOUSE, "https://cdn.example.org/pyodide/v314/full/")
    packages = resolve_packages(source.experiment, source.file, runtime)
    assert packages.pyodide_packages == ("numpy",) and packages.packages_to_install == ("packaging",)
    assert packages.wheels is None and packages.page_config()["wheels"] is None  # unchecked: micropip in the page


@pytest.mark.parametrize(
    "problem",
    ["a lock dependency the distribution lacks", "a local module named like a wheelhouse project", "a link out"],
)
def test_the_distribution_and_the_wheelhouse_are_checked_too(tmp_path, problem):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    shutil.copy(MICROPIP, wheelhouse)
    study = write_study(tmp_path / "study", packages=("fabricated-numeric",))
    (study.parent / "catch_env.py").write_text(CATCH_ENV)
    source = load_study(str(study))
    if problem == "a lock dependency the distribution lacks":
        dist = fabricated_distribution(tmp_path / "dist", depends=("numpy",))
        expected = "scene 'catch' needs package 'numpy' (required by fabricated_numeric 1.0.0), which is not in"
    elif problem == "a local module named like a wheelhouse project":
        dist = fabricated_distribution(tmp_path / "dist")
        make_wheel(wheelhouse, "preflight_local_catch_env", "1.0", {"other.py": ""})
        expected = "catch_env beside study.py would be served as preflight-local-catch-env, a name the wheelhouse"
    else:
        dist = fabricated_distribution(tmp_path / "dist")
        (dist / "python_stdlib.zip").symlink_to(DEFAULT_PYODIDE_DIR / "python_stdlib.zip")
        expected = "python_stdlib.zip links to"
    with pytest.raises(RuntimeSetupError, match=re.escape(expected)):
        resolve_packages(source.experiment, source.file, load_runtime(dist, wheelhouse))


# -- the start-up check on the command line ----------------------------------------------------------------------

PIP = "pip download --no-deps --only-binary=:all: --python-version 3.14 --platform any --dest"


def test_a_missing_package_stops_the_server_with_the_command_that_fetches_it(tmp_path):
    study = write_study(tmp_path / "study", packages=("foo",))
    (study.parent / "catch_env.py").write_text("")
    run = start("--experiment", str(study))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == (
        "python -m server: error: scene 'catch' needs package 'foo', which is not in the wheelhouse "
        "(build/wheelhouse) nor in the Pyodide distribution (node_modules/pyodide); "
        f"fetch a pure-Python wheel with: {PIP} build/wheelhouse foo"
    )


def test_a_missing_requirement_of_a_wheel_is_named_with_the_wheel_that_needs_it(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    shutil.copy(MICROPIP, wheelhouse)
    make_wheel(
        wheelhouse,
        "needy",
        "1.0",
        {"needy.py": ""},
        requires=("absent-dep>=1", "sphinx; extra == 'docs'", "pywin32; sys_platform == 'win32'"),
    )
    study = write_study(tmp_path / "study", packages=("needy",))
    (study.parent / "catch_env.py").write_text("")
    run = start("--experiment", str(study), "--wheelhouse", str(wheelhouse))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == (
        f"python -m server: error: scene 'catch' needs package 'absent-dep>=1' (required by needy 1.0), which is not "
        f"in the wheelhouse ({wheelhouse}) nor in the Pyodide distribution (node_modules/pyodide); "
        f"fetch a pure-Python wheel with: {PIP} {wheelhouse} 'absent-dep>=1'"
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "no module",
            "scene 'catch': environment module 'catch_env' not found: put catch_env.py beside study.py, "
            "or add the package that provides it to packages_to_install",
        ),
        ("numpy from the npm core", "it is a Pyodide package this distribution does not ship: serve the full Pyodide"),
        ("the experiment file itself", "environment module 'study' is the experiment file itself"),
        ("not through Pyodide", "run_through_pyodide=False is not supported (line 5 of"),
        (
            "a binary wheel",
            "but the wheelhouse ({wheelhouse}) and the Pyodide distribution (node_modules/pyodide) have only "
            "native-1.0-cp314-cp314-manylinux_2_17_x86_64.whl, which does not match it or does not run in the browser",
        ),
        ("not a requirement", "packages_to_install entry 'foo bar!' is not a requirement: Expected semicolon"),
        ("a URL", "packages_to_install entry 'foo @ https://example.org/foo-1.0-py3-none-any.whl' names a URL"),
        (
            "a misspelt factory",
            "scene 'catch': environment catch_env:make_dou not found: catch_env.py defines no make_dou",
        ),
    ],
)
def test_each_start_up_problem_is_one_line_and_exit_code_2(tmp_path, case, expected):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    shutil.copy(MICROPIP, wheelhouse)
    study = {
        "no module": lambda: write_study(tmp_path),
        "numpy from the npm core": lambda: write_study(tmp_path, environment="numpy:array", packages=("numpy",)),
        "the experiment file itself": lambda: write_study(tmp_path, environment="study:make"),
        "not through Pyodide": lambda: write_study(tmp_path, run_through_pyodide=False),
        "a binary wheel": lambda: write_study(tmp_path, environment="native:make", packages=("native",)),
        "not a requirement": lambda: write_study(tmp_path, packages=("foo bar!",)),
        "a URL": lambda: write_study(tmp_path, packages=("foo @ https://example.org/foo-1.0-py3-none-any.whl",)),
        "a misspelt factory": lambda: write_study(tmp_path, environment="catch_env:make_dou"),
    }[case]()
    if case == "a misspelt factory":
        (tmp_path / "catch_env.py").write_text(CATCH_ENV)
    binary = make_wheel(wheelhouse, "native", "1.0", {"native.py": ""})
    binary.rename(wheelhouse / "native-1.0-cp314-cp314-manylinux_2_17_x86_64.whl")
    run = start("--experiment", str(study), "--wheelhouse", str(wheelhouse))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith("python -m server: error: ")
    assert expected.format(wheelhouse=wheelhouse) in line


def test_a_syntax_error_in_the_study_s_own_module_is_logged_with_its_line_at_start_up(tmp_path, caplog):
    (tmp_path / "catch_env.py").write_text("def make():\n    return Catch(\n\nclass Catch:\n    pass\n")
    scene = GymScene("catch", "catch_env:make")
    with caplog.at_level(logging.WARNING, logger="preflight"):
        check_local_sources(
            Experiment("x", [StartScene(), scene, EndScene()]), {"catch_env": tmp_path / "catch_env.py"}
        )
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{tmp_path / 'catch_env.py'}, line 2: SyntaxError: ")


# -- in the browser ----------------------------------------------------------------------------------------------


def test_a_full_distribution_package_loads_with_load_package_in_the_worker(tmp_path, browser):
    dist = fabricated_distribution(tmp_path / "dist", core=True)
    study = write_study(
        tmp_path / "study",
        packages=("fabricated-numeric",),
        keys='{"ArrowRight": 1}',
        input='"turn"',
        record_observations=True,
    )
    (study.parent / "catch_env.py").write_text(CATCH_ENV)
    data = tmp_path / "data"
    with served(data, "--pyodide-dir", str(dist), "--experiment", str(study)) as url:
        context = browser.new_context()
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        try:
            page = context.new_page()
            page.goto(url + "?PROLIFIC_PID=full-release")
            page.wait_for_function("['ready', 'error'].includes(window.__preflight?.runtime?.status)", timeout=90_000)
            assert page.evaluate("window.__preflight.runtime.settled.status") == "ready"
            [worker] = page.workers
            fetched = worker.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
            # Python in the worker imports the environment beside study.py, which imports the distribution's package.
            page.wait_for_function("window.__preflight.state?.may_advance === true", timeout=30_000)
            page.click("#advance")
            page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=30_000)
            page.keyboard.press("ArrowRight")
            page.wait_for_function("window.__preflight.state?.state === 'ready'", timeout=30_000)
        finally:
            context.close()
    wheel = f"{url}pyodide/{CORE_VERSION}/fabricated_numeric-1.0.0-py3-none-any.whl"
    assert wheel in requests and wheel in fetched
    assert any(u.startswith(f"{url}local-wheels/preflight_local_catch_env-0.0.0+") for u in fetched)
    [records] = [list(read_records(p)) for p in (data / "sessions").glob("*.msgpack")]
    [step] = [s for r in records if r["kind"] == "steps" for s in r["steps"]]
    assert step["observation"] == {"value": 42} and step["reward"] == 1.0
    stages = [(r.get("package"), r.get("done"), r.get("total")) for r in records if r.get("stage") == "packages"]
    assert stages == [("fabricated_numeric", 0, 2), ("preflight-local-catch-env", 1, 2)]


SCORER_ENV = """\
import scorer


class Catch:
    def reset(self, seed=None):
        return {"value": 0}, {}

    def step(self, action):
        return {"value": scorer.score()}, 1.0, True, False, {}

    def render(self):
        return {"width": 10, "height": 10, "shapes": []}


def make():
    return Catch()
"""


@pytest.mark.parametrize("installer", ["direct", "micropip"])
def test_the_wheels_the_server_lists_are_installed_without_micropip_and_the_game_plays(tmp_path, browser, installer):
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    for wheel in DEFAULT_WHEELHOUSE.glob("*.whl"):  # micropip (and what it needs), for the --micropip page
        shutil.copy(wheel, wheelhouse / wheel.name)
    make_wheel(wheelhouse, "scorebase", "1.0", {"scorebase.py": "BASE = 40\n"})
    make_wheel(
        wheelhouse,
        "scorer",
        "2.0",
        {"scorer/__init__.py": "import scorebase\n\n\ndef score():\n    return scorebase.BASE + 2\n"},
        requires=("scorebase>=1",),
    )
    study = write_study(
        tmp_path / "study", packages=("scorer",), keys='{"ArrowRight": 1}', input='"turn"', record_observations=True
    )
    (study.parent / "catch_env.py").write_text(SCORER_ENV)
    data = tmp_path / "data"
    flags = ("--micropip",) if installer == "micropip" else ()
    with served(data, "--wheelhouse", str(wheelhouse), "--experiment", str(study), *flags) as url:
        context = browser.new_context()
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        try:
            page = context.new_page()
            page.goto(url + "?PROLIFIC_PID=direct")
            page.wait_for_function("['ready', 'error'].includes(window.__preflight?.runtime?.status)", timeout=90_000)
            assert page.evaluate("window.__preflight.runtime.settled.status") == "ready"
            page.wait_for_function("window.__preflight.state?.may_advance === true", timeout=30_000)
            page.click("#advance")
            page.wait_for_function("window.__preflight.firstFrameAt !== null", timeout=30_000)
            page.keyboard.press("ArrowRight")
            page.wait_for_function("window.__preflight.state?.state === 'ready'", timeout=30_000)
            config = page.evaluate("window.__preflight.config.pyodide_config")
        finally:
            context.close()
    [records] = [list(read_records(p)) for p in (data / "sessions").glob("*.msgpack")]
    [step] = [s for r in records if r["kind"] == "steps" for s in r["steps"]]
    assert step["observation"] == {"value": 42} and step["reward"] == 1.0  # scorer and scorebase, imported in the game
    stages = [r.get("stage") for r in records if r["kind"] == "preload" and r["status"] == "loading"]
    fetched = [u.rsplit("/", 1)[-1] for u in requests if "wheels/" in u or "/simple/" in u]
    if installer == "direct":
        listed = [w["url"].rsplit("/", 1)[-1] for w in config["wheels"]]
        assert [w["name"] for w in config["wheels"]] == ["preflight-local-catch-env", "scorebase", "scorer"]
        assert listed[1:] == ["scorebase-1.0-py3-none-any.whl", "scorer-2.0-py3-none-any.whl"]
        assert sorted(fetched) == sorted(listed)  # each listed wheel once: no micropip, no index, no resolution
        assert "micropip" not in stages
        with_names = [
            (r.get("package"), r.get("done"), r.get("total")) for r in records if r.get("stage") == "packages"
        ]
        assert [name for name, _, _ in with_names] == [w["name"] for w in config["wheels"]]
    else:
        assert config["wheels"] is None
        assert any(u.startswith("micropip-") for u in fetched)
        assert any("/simple/scorer/" in u for u in requests)  # micropip asked the index
        assert stages[:2] == ["runtime", "micropip"]
