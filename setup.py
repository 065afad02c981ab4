"""Stages the pinned page runtime into the package before a wheel or sdist is built, so installs serve it.

The files come from the checkout's `node_modules/` (npm ci) and `build/wheelhouse/` (make wheelhouse) into
`server/_bundle/`, which git ignores; building from an sdist finds them already staged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "server" / "_bundle"
PYODIDE = HERE / "node_modules" / "pyodide"
PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "pyodide-lock.json", "package.json")
PYODIDE_OPTIONAL = ("python_stdlib.zip",)  # inside pyodide.asm.wasm in some releases
MSGPACK = HERE / "node_modules" / "@msgpack" / "msgpack" / "dist.esm"
WHEELHOUSE = HERE / "build" / "wheelhouse"
WHEELS = ("micropip-", "packaging-")


def stage() -> None:
    """Copy the runtime into `server/_bundle/` from the checkout; keep what is staged when there is no checkout."""
    if not PYODIDE.is_dir():
        if (BUNDLE / "pyodide" / "pyodide.mjs").is_file():
            return  # an sdist: staged when it was made
        raise SystemExit("node_modules/pyodide not found: run `npm ci` and `make wheelhouse` before building")
    missing = [name for name in PYODIDE_FILES if not (PYODIDE / name).is_file()]
    wheels = sorted(p for p in WHEELHOUSE.glob("*.whl") if p.name.startswith(WHEELS))
    if missing or not MSGPACK.is_dir() or len(wheels) < len(WHEELS):
        raise SystemExit(
            f"the runtime to bundle is incomplete (Pyodide missing {missing}, msgpack {MSGPACK.is_dir()}, "
            f"wheels {[w.name for w in wheels]}): run `npm ci` and `make wheelhouse` before building"
        )
    shutil.rmtree(BUNDLE, ignore_errors=True)
    (BUNDLE / "pyodide").mkdir(parents=True)
    for name in PYODIDE_FILES + PYODIDE_OPTIONAL:
        if (PYODIDE / name).is_file():
            shutil.copyfile(PYODIDE / name, BUNDLE / "pyodide" / name)
    for source in MSGPACK.rglob("*.mjs"):
        target = BUNDLE / "msgpack" / source.relative_to(MSGPACK)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (BUNDLE / "wheels").mkdir()
    for wheel in wheels:
        shutil.copyfile(wheel, BUNDLE / "wheels" / wheel.name)


class StagedBuildPy(build_py):
    """`build_py` that stages the runtime first, so the wheel carries it; an editable install reads node_modules."""

    def run(self) -> None:
        if not getattr(self, "editable_mode", False):
            stage()
        super().run()


class StagedSdist(sdist):
    """`sdist` that stages the runtime first, so a wheel built from the sdist carries it too."""

    def run(self) -> None:
        stage()
        super().run()


setup(cmdclass={"build_py": StagedBuildPy, "sdist": StagedSdist})
