"""Preflight as a researcher installs it: the wheel and the sdist into fresh venvs, away from this checkout.

Each venv runs `python -m server` from a temporary folder with no PYTHONPATH, so everything it serves (the
page, the admin view, Pyodide, msgpack, micropip) must come from the installed package and the study's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from client.harness import ROOT, free_port, records_of, stop_server
from server import __version__
from server.store import read_records
from tests.test_browser import LOAD_TIMEOUT_MS, play_to_goal, state_is

ADMIN_TOKEN = "install-test-admin-token"


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a researcher's shell: no PYTHONPATH or venv of ours, caches in a folder of the test's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["XDG_CACHE_HOME"] = str(home / "xdg-cache")
    return env


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The wheel and the sdist, built the way a release is (`python -m build`), from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    built = run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], ROOT, dict(os.environ))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def installed(home: Path, target: Path) -> Path:
    """A fresh venv in `home` with `target` (a wheel or an sdist) pip-installed; its python."""
    venv.create(home / "venv", with_pip=True)
    python = home / "venv" / "bin" / "python"
    done = run([str(python), "-m", "pip", "install", "--quiet", str(target)], home, clean_env(home))
    assert done.returncode == 0, done.stderr[-3000:]
    return python


@contextmanager
def serving(python: Path, cwd: Path, *flags: str) -> Iterator[tuple[str, Path]]:
    """`python -m server` from the installed venv, in `cwd`; yields the participant URL and its log."""
    port = free_port()
    log = cwd / f"server-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(python), "-m", "server", "--port", str(port), *flags],
            cwd=cwd,
            env=clean_env(cwd),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Participant URL" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Participant URL" in log.read_text(), log.read_text()
        yield f"http://127.0.0.1:{port}/", log
    finally:
        stop_server(proc)


def test_init_writes_a_study_folder_and_refuses_to_overwrite_one(tmp_path):
    study = tmp_path / "my-study"
    first = run([sys.executable, "-m", "server", "init", str(study)], ROOT, dict(os.environ))
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in study.iterdir()) == [".gitignore", "README.md", "gridworld_env.py", "study.py"]
    assert "data/" in (study / ".gitignore").read_text() and ".preflight/" in (study / ".gitignore").read_text()
    (study / "study.py").write_text((study / "study.py").read_text() + "# the researcher's edit\n")
    again = run([sys.executable, "-m", "server", "init", str(study)], ROOT, dict(os.environ))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert (study / "study.py").read_text().endswith("# the researcher's edit\n")
    (tmp_path / "a-file").write_text("")
    blocked = run([sys.executable, "-m", "server", "init", str(tmp_path / "a-file" / "s")], ROOT, dict(os.environ))
    assert blocked.returncode == 2 and "cannot write" in blocked.stderr and "Traceback" not in blocked.stderr
    version = run([sys.executable, "-m", "server", "--version"], ROOT, dict(os.environ))
    assert version.returncode == 0 and version.stdout.strip() == f"Preflight {__version__}"


@pytest.mark.slow
def test_the_installed_wheel_serves_a_new_study_to_a_participant_to_completion(dist, tmp_path, browser):
    python = installed(tmp_path, dist["wheel"])
    work = tmp_path / "work"  # the researcher's folder, far from this checkout
    work.mkdir()
    version = run([str(python), "-m", "server", "--version"], work, clean_env(work))
    assert version.stdout.strip() == f"Preflight {__version__}", version.stderr
    init = run([str(python), "-m", "server", "init", "my-study"], work, clean_env(work))
    assert init.returncode == 0, init.stderr
    assert "cd my-study && python -m server --experiment study.py" in init.stdout  # run there: data/ stays in it
    site = run([str(python), "-c", "import server; print(server.__file__)"], work, clean_env(work)).stdout
    assert not Path(site.strip()).is_relative_to(ROOT)

    with serving(python, work, "--experiment", "my-study/study.py", "--admin-token", ADMIN_TOKEN) as (url, log):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            page = context.new_page()
            page.goto(url + "?PROLIFIC_PID=installed-walker")
            state_is(page, "ready", timeout=LOAD_TIMEOUT_MS, scene_id="start")  # Python preloaded from our server
            page.click("#advance")
            state_is(page, "ready", scene_id="instructions")
            page.click("#advance")
            state_is(page, "in_game")
            play_to_goal(page)
            page.click("#advance")
            state_is(page, "completed")
            assert page.inner_text("#completion-code") == "CHANGE-ME"
            admin = page.goto(url + "admin?token=" + ADMIN_TOKEN)
            assert admin is not None and admin.ok
            assert page.inner_text("h1") == "my-study"
        finally:
            context.close()
        assert "Traceback" not in log.read_text()

    records = records_of(work / "data", "installed-walker")
    assert [r["outcome"] for r in records if r["kind"] == "outcome"] == ["completed"]
    [snapshot] = read_records(work / "data" / "study.msgpack")
    assert snapshot["preflight_version"] == __version__ and snapshot["experiment"]["name"] == "my-study"
    exported = run(
        [str(python), "-m", "server", "export", "--data-dir", "data", "--format", "csv"], work, clean_env(work)
    )
    assert exported.returncode == 0, exported.stderr
    assert "installed-walker" in (work / "data" / "export" / "participants.csv").read_text()
    cache = work / "my-study" / ".preflight"
    assert sorted(p.name.split("-")[0] for p in (cache / "wheelhouse").glob("*.whl")) == ["micropip", "packaging"]
    assert [p.name.split("-")[0] for p in (cache / "wheels").glob("*.whl")] == ["preflight_local_gridworld_env"]
    package = Path(site.strip()).parent
    assert not list(package.rglob(".preflight")), "nothing is written inside the installed package"


@pytest.mark.slow
def test_the_installed_sdist_starts_a_new_study(dist, tmp_path):
    python = installed(tmp_path, dist["sdist"])
    work = tmp_path / "work"
    work.mkdir()
    assert run([str(python), "-m", "server", "init", "s"], work, clean_env(work)).returncode == 0
    with serving(python, work, "--experiment", "s/study.py") as (_, log):
        assert "Admin view:" in log.read_text()
    with serving(python, work) as (_, log):  # the built-in example, inside the package: its cache is per user
        assert "'gridworld-example'" in log.read_text()
    cached = sorted(p.name.split("-")[0] for p in (work / "xdg-cache" / "preflight").rglob("*.whl"))
    assert cached == ["micropip", "packaging", "preflight_local_gridworld_env"]
    site = run([str(python), "-c", "import server; print(server.__file__)"], work, clean_env(work)).stdout
    assert not list(Path(site.strip()).parent.rglob(".preflight"))
    (Path(site.strip()).parent / "_bundle" / "pyodide" / "pyodide.mjs").unlink()
    broken = run([str(python), "-m", "server", "--experiment", "s/study.py"], work, clean_env(work), timeout=60)
    assert broken.returncode == 2 and "Pyodide not found" in broken.stderr and "make dist" in broken.stderr
    assert "Traceback" not in broken.stderr
