"""The Python runtime the page preloads, served from our own origin: Pyodide, micropip and a package index.

The npm `pyodide` package ships only the core, and its lock file names micropip
wheels it does not include (with other checksums than PyPI's), so the page gets a
lock written for the wheels this server actually serves.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tornado.web

from .precompress import EncodedFiles

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYODIDE_DIR = ROOT / "node_modules" / "pyodide"
DEFAULT_WHEELHOUSE = ROOT / "build" / "wheelhouse"
MSGPACK_DIR = ROOT / "node_modules" / "@msgpack" / "msgpack" / "dist.esm"


class RuntimeSetupError(Exception):
    """The runtime files are missing or unusable; the message says which and how to get them."""


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Wheel:
    project: str
    filename: str
    sha256: str


def scan_wheelhouse(directory: Path) -> dict[str, list[Wheel]]:
    """Every wheel in `directory`, by normalized project name, with its checksum."""
    index: dict[str, list[Wheel]] = {}
    for path in sorted(directory.glob("*.whl")):
        project = normalize(path.name.split("-")[0])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        index.setdefault(project, []).append(Wheel(project, path.name, digest))
    return index


@dataclass(frozen=True)
class Runtime:
    """What the page needs to load Python: where Pyodide is, the lock, the package index."""

    pyodide_dir: Path | None
    pyodide_url: str
    version: str
    wheelhouse: Path
    wheels: dict[str, list[Wheel]]
    lock: dict[str, Any] | None

    def page_config(self) -> dict[str, Any]:
        """The part of `pyodide_config` that says where everything is; URLs relative to the origin."""
        return {
            "pyodide_url": self.pyodide_url,
            "pyodide_version": self.version,
            "lock": self.lock,
            "wheel_base_url": "/wheels/",
            "index_url": "/simple/{package_name}/",
        }

    def describe(self) -> dict[str, Any]:
        return {
            "pyodide_version": self.version,
            "pyodide_url": self.pyodide_url,
            "wheels": {w.filename: w.sha256 for ws in self.wheels.values() for w in ws},
            "packages": {p: [w.filename.split("-")[1] for w in ws] for p, ws in self.wheels.items()},
        }


def load_runtime(pyodide_dir: Path | None, wheelhouse: Path, pyodide_url: str | None = None) -> Runtime:
    """Check the files are there and write the lock; fail with set-up instructions if not."""
    if not wheelhouse.is_dir():
        raise RuntimeSetupError(
            f"wheelhouse not found: {wheelhouse} (run `make serve`, or `make wheelhouse`, to prepare it)"
        )
    wheels = scan_wheelhouse(wheelhouse)
    if pyodide_url:  # a distribution the researcher hosts elsewhere, with its own lock and packages
        return Runtime(None, pyodide_url.rstrip("/") + "/", "external", wheelhouse, wheels, None)
    assert pyodide_dir is not None
    lock_path = pyodide_dir / "pyodide-lock.json"
    if not (pyodide_dir / "pyodide.mjs").is_file() or not lock_path.is_file():
        raise RuntimeSetupError(f"Pyodide not found in {pyodide_dir} (run `make serve`, or `npm ci`, to install it)")
    original = json.loads(lock_path.read_text())
    version = (
        json.loads((pyodide_dir / "package.json").read_text())["version"]
        if (pyodide_dir / "package.json").is_file()
        else original["info"].get("version", "local")
    )
    lock = None
    if not (pyodide_dir / original["packages"]["micropip"]["file_name"]).is_file():
        if "micropip" not in wheels:
            raise RuntimeSetupError(
                f"no micropip wheel in {wheelhouse} and none in {pyodide_dir} (run `make wheelhouse`)"
            )
        lock = {"info": original["info"], "packages": {}}
        for project in ("micropip",):
            wheel = wheels[project][-1]
            entry = dict(original["packages"][project])
            entry.update(
                file_name=wheel.filename, sha256=wheel.sha256, version=wheel.filename.split("-")[1], depends=[]
            )
            lock["packages"][project] = entry
    return Runtime(pyodide_dir, f"/pyodide/{version}/", version, wheelhouse, wheels, lock)


class VersionedFiles(EncodedFiles):
    """Files under a versioned URL never change: browsers may keep them for a year (in every coding sent)."""

    def get_cache_time(self, path: str, modified: Any, mime_type: str) -> int:
        return 365 * 24 * 3600

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")

    @classmethod
    def get_content_version(cls, abspath: str) -> str:
        """Size and mtime, not a SHA-512 of 9.6 MB on every participant's request."""
        stat = Path(abspath).stat()
        return f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


class SimpleIndex(tornado.web.RequestHandler):
    """A PEP 503 (HTML) / PEP 691 (JSON) simple index over the wheelhouse; micropip asks for JSON."""

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def get(self, project: str = "") -> None:
        wheels = self.runtime.wheels
        if not project:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish("".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted(wheels)))
            return
        files = wheels.get(normalize(project))
        if files is None:
            raise tornado.web.HTTPError(404, reason=f"no project {normalize(project)} in the index")
        if "application/vnd.pypi.simple.v1+json" in self.request.headers.get("Accept", ""):
            origin = f"{self.request.protocol}://{self.request.host}"
            self.set_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.finish(
                json.dumps(
                    {
                        "meta": {"api-version": "1.0"},
                        "name": normalize(project),
                        "files": [
                            {
                                "filename": w.filename,
                                "url": f"{origin}/wheels/{w.filename}",
                                "hashes": {"sha256": w.sha256},
                            }
                            for w in files
                        ],
                    }
                )
            )
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "".join(
                f'<a href="/wheels/{html.escape(w.filename)}#sha256={w.sha256}">{html.escape(w.filename)}</a><br/>\n'
                for w in files
            )
        )
