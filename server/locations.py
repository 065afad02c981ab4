"""Where the page's runtime files and a study's caches are, in a checkout and in an installed Preflight.

A checkout (`make serve`, `make test`) serves the Pyodide core and msgpack from `node_modules/` and the
wheelhouse from `build/wheelhouse/`, as it always has. An installed Preflight serves the copies its wheel
was built with (`server/_bundle/`, staged by setup.py from those same folders and never committed), and
keeps everything it writes in a cache beside the study, or per user for a study inside the package.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent
BUNDLE = PACKAGE_DIR / "_bundle"
"""The runtime files an installed Preflight carries: `pyodide/`, `msgpack/` and `wheels/` (micropip, packaging)."""


def in_checkout() -> bool:
    """True when running from the source tree (an editable install), which serves what `make serve` installs."""
    return all((CHECKOUT / name).is_file() for name in ("setup.cfg", "package.json", "server/__init__.py"))


def _pick(checkout: Path, bundled: Path) -> Path:
    return checkout if in_checkout() else bundled


PYODIDE_DIR = _pick(CHECKOUT / "node_modules" / "pyodide", BUNDLE / "pyodide")
MSGPACK_DIR = _pick(CHECKOUT / "node_modules" / "@msgpack" / "msgpack" / "dist.esm", BUNDLE / "msgpack")
WHEELHOUSE: Path | None = CHECKOUT / "build" / "wheelhouse" if in_checkout() else None
"""The checkout's wheelhouse; None in an installed Preflight, whose wheelhouse is in the study's cache."""
BUNDLED_WHEELS = BUNDLE / "wheels"
SETUP_HINT = (
    "run `make serve`, or `npm ci` and `make wheelhouse`, to install it"
    if in_checkout()
    else "this Preflight was installed without its runtime files; reinstall it from a wheel built in a checkout "
    "with `make dist`"
)
WHEELHOUSE_HINT = (
    SETUP_HINT
    if in_checkout()
    else "give --wheelhouse an existing folder of wheels, or leave it out for the study's .preflight/wheelhouse/"
)


def user_cache() -> Path:
    """The per-user cache (XDG), for what Preflight writes about a study it must not write beside."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "preflight"


def study_cache(study_dir: Path) -> Path:
    """`<study>/.preflight/`, or a per-user folder for a study inside an installed package (the built-in example)."""
    study_dir = study_dir.resolve()
    if not in_checkout() and study_dir.is_relative_to(PACKAGE_DIR):
        return user_cache() / "studies" / hashlib.sha256(str(study_dir).encode()).hexdigest()[:16]
    return study_dir / ".preflight"


def study_wheelhouse(study_dir: Path) -> Path:
    """The study's wheelhouse in its cache, holding at least the micropip and packaging this Preflight ships."""
    wheelhouse = study_cache(study_dir) / "wheelhouse"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    if BUNDLED_WHEELS.is_dir():
        for wheel in BUNDLED_WHEELS.glob("*.whl"):
            if not (wheelhouse / wheel.name).is_file():  # copied whole or not at all: a half wheel never serves
                partial = wheelhouse / f".{wheel.name}.{os.getpid()}"
                shutil.copyfile(wheel, partial)
                partial.replace(wheelhouse / wheel.name)
    return wheelhouse
