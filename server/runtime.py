"""The Python runtime the page preloads, served from our own origin: Pyodide, micropip and a package index.

The npm `pyodide` package ships only the core, and its lock file names micropip
wheels it does not include (with other checksums than PyPI's), so the page gets a
lock written for the wheels this server actually serves. A full Pyodide release
ships its packages (numpy, ...) beside the core; those its lock names are what
`pyodide.loadPackage` can load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tornado.web

from .locations import MSGPACK_DIR as MSGPACK_DIR
from .locations import PYODIDE_DIR, SETUP_HINT, WHEELHOUSE, WHEELHOUSE_HINT
from .precompress import EncodedFiles

DEFAULT_PYODIDE_DIR = PYODIDE_DIR
DEFAULT_WHEELHOUSE = WHEELHOUSE  # None in an installed Preflight: the study's own, in its cache
PYTHON_VERSION = "3.14.2"
"""The page's Python when the distribution does not say (`--pyodide-url`): Pyodide 314's."""


class RuntimeSetupError(Exception):
    """The runtime files are missing or unusable; the message says which and how to get them."""


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Wheel:
    """One file of the package index: where it is on disk and the origin-relative URL it is served at."""

    project: str
    filename: str
    sha256: str
    path: Path
    url: str

    @property
    def version(self) -> str:
        return self.filename.split("-")[1]


def scan_wheelhouse(directory: Path) -> dict[str, list[Wheel]]:
    """Every wheel in `directory`, by normalized project name, with its checksum."""
    index: dict[str, list[Wheel]] = {}
    for path in sorted(directory.glob("*.whl")):
        project = normalize(path.name.split("-")[0])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        index.setdefault(project, []).append(Wheel(project, path.name, digest, path, f"/wheels/{path.name}"))
    return index


@dataclass(frozen=True)
class Runtime:
    """What the page needs to load Python: where Pyodide is, the lock, the package index."""

    pyodide_dir: Path | None
    pyodide_url: str
    version: str
    wheelhouse: Path
    wheels: dict[str, list[Wheel]]  # the package index: the wheelhouse, and the study's own modules once packed
    lock: dict[str, Any] | None  # sent to the page when the distribution's own lock cannot be used as it is
    distribution: dict[str, dict[str, Any]] | None  # lock entries whose files are served, by normalized name
    python_version: str  # the page's Python, e.g. 3.14.2
    unshipped: frozenset[str] = frozenset()  # named in the lock, files absent (the npm core ships none)

    def with_wheels(self, extra: Iterable[Wheel]) -> Runtime:
        """The same runtime with more wheels in its index (the study's own modules, once packed)."""
        wheels = {project: list(files) for project, files in self.wheels.items()}
        for wheel in extra:
            wheels.setdefault(wheel.project, []).append(wheel)
        return dataclasses.replace(self, wheels=wheels)

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
            "packages": {p: [w.version for w in ws] for p, ws in self.wheels.items()},
            "pyodide_packages": (
                None if self.distribution is None else {e["name"]: e["version"] for e in self.distribution.values()}
            ),
        }


def load_runtime(pyodide_dir: Path | None, wheelhouse: Path, pyodide_url: str | None = None) -> Runtime:
    """Check the files are there and write the lock; fail with set-up instructions if not."""
    if not wheelhouse.is_dir():
        raise RuntimeSetupError(f"wheelhouse not found: {wheelhouse} ({WHEELHOUSE_HINT})")
    wheels = scan_wheelhouse(wheelhouse)
    if pyodide_url:  # a distribution the researcher hosts elsewhere, with its own lock and packages
        return Runtime(None, pyodide_url.rstrip("/") + "/", "external", wheelhouse, wheels, None, None, PYTHON_VERSION)
    assert pyodide_dir is not None
    lock_path = pyodide_dir / "pyodide-lock.json"
    if not (pyodide_dir / "pyodide.mjs").is_file() or not lock_path.is_file():
        raise RuntimeSetupError(f"Pyodide not found in {pyodide_dir} ({SETUP_HINT})")
    original = _read_lock(lock_path)
    version = (
        json.loads((pyodide_dir / "package.json").read_text())["version"]
        if (pyodide_dir / "package.json").is_file()
        else original["info"].get("version", "local")
    )
    served = {
        normalize(name): entry
        for name, entry in original["packages"].items()
        if _is_relative(entry["file_name"]) and (pyodide_dir / entry["file_name"]).is_file()
    }
    _refuse_outside_links(
        pyodide_dir, [*pyodide_dir.iterdir(), *(pyodide_dir / e["file_name"] for e in served.values())]
    )
    lock = None
    if "micropip" not in served:
        if "micropip" not in wheels:
            raise RuntimeSetupError(f"no micropip wheel in {wheelhouse} and none in {pyodide_dir} ({SETUP_HINT})")
        wheel = wheels["micropip"][-1]
        micropip = {**MICROPIP_ENTRY, **original["packages"].get("micropip", {})}
        micropip.update(file_name=wheel.filename, sha256=wheel.sha256, version=wheel.version, depends=[])
        # Relative file names are fetched from the wheelhouse (`wheel_base_url`): the distribution's own, by path.
        packages = {
            name: {**entry, "file_name": f"/pyodide/{version}/{entry['file_name']}"} for name, entry in served.items()
        }
        lock = {"info": original["info"], "packages": {**packages, "micropip": micropip}}
        served["micropip"] = micropip
    python = str(original["info"].get("python", PYTHON_VERSION))
    unshipped = frozenset(normalize(name) for name in original["packages"]) - set(served)
    return Runtime(pyodide_dir, f"/pyodide/{version}/", version, wheelhouse, wheels, lock, served, python, unshipped)


MICROPIP_ENTRY: dict[str, Any] = {
    "name": "micropip",
    "install_dir": "site",
    "package_type": "package",
    "imports": ["micropip"],
    "unvendored_tests": False,
}
"""What a lock says of micropip, for a distribution whose lock does not name it."""


def _read_lock(path: Path) -> dict[str, Any]:
    """The distribution's lock, or an error naming the file when it is not one."""
    try:
        lock = json.loads(path.read_text())
        entries = lock["packages"]
        lock.setdefault("info", {})
        for name, entry in entries.items():
            for key in ("name", "version", "file_name"):
                if not isinstance(entry.get(key), str):
                    raise ValueError(f"entry {name!r} has no {key}")
            entry.setdefault("depends", [])
            entry.setdefault("imports", [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RuntimeSetupError(f"{path} is not a Pyodide lock file ({type(exc).__name__}: {exc})") from exc
    return dict(lock)


def _refuse_outside_links(directory: Path, paths: Iterable[Path]) -> None:
    """Tornado refuses (403) a served file that is a link out of its directory, so start-up says so first."""
    root = directory.resolve()
    for path in paths:
        if path.is_file() and not path.resolve().is_relative_to(root):
            raise RuntimeSetupError(
                f"{path} links to {path.resolve()}, outside {directory}, and would not be served; "
                f"copy the file into {directory} instead"
            )


def _is_relative(file_name: str) -> bool:
    return "://" not in file_name and not file_name.startswith("/")


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


WILDCARD_HOSTS = ("", "0.0.0.0", "::")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_HOST_NAME = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True)
class IndexOrigin:
    """Where `/simple`'s wheel URLs point: `--public-origin`, else the address the server was told to listen on.

    micropip 0.11 takes a scheme-less URL for a local file, so the URLs are absolute; an absolute URL copied from
    any Host header would let one forged request (kept by a shared cache) send participants' installs elsewhere.
    So the Host header is used only when it names the configured address (same port; for a loopback address any
    loopback name, so a page opened at localhost fetches from localhost); when the server listens on every
    interface, any well-formed name at the configured port is taken, as the server cannot know its names.
    """

    public: str  # --public-origin, "" when not given
    host: str  # --host
    port: int  # --port

    def of(self, scheme: str, host_header: str) -> str | None:
        """The origin for a request, or None when its Host names another address and none is configured."""
        if self.public:
            return self.public
        name, _, port = host_header.rpartition(":") if not host_header.endswith("]") else (host_header, "", "")
        if not name or not port.isdigit():
            name, port = host_header, "443" if scheme == "https" else "80"
        own = _bracketed(self.host)
        names_us = (
            self.host in WILDCARD_HOSTS
            or name.lower() == own.lower()
            or (own in LOOPBACK_NAMES and name.lower() in LOOPBACK_NAMES)
        )
        if int(port) == self.port and names_us and _HOST_NAME.match(name):
            return f"{scheme}://{host_header}"
        return None if self.host in WILDCARD_HOSTS else f"http://{own}:{self.port}"


class SimpleIndex(tornado.web.RequestHandler):
    """A PEP 503 (HTML) / PEP 691 (JSON) simple index over the wheelhouse; micropip asks for JSON."""

    def initialize(self, wheels: dict[str, list[Wheel]], origin: IndexOrigin) -> None:
        self.wheels = wheels
        self.origin = origin

    def get(self, project: str = "") -> None:
        wheels = self.wheels
        if not project:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish("".join(f'<a href="/simple/{p}/">{p}</a>\n' for p in sorted(wheels)))
            return
        files = wheels.get(normalize(project))
        if files is None:
            raise tornado.web.HTTPError(404, reason=f"no project {normalize(project)} in the index")
        if "application/vnd.pypi.simple.v1+json" in self.request.headers.get("Accept", ""):
            origin = self.origin.of(self.request.protocol, self.request.host)
            if origin is None:
                raise tornado.web.HTTPError(
                    421, reason="this server does not answer to that Host; start it with --public-origin"
                )
            if not self.origin.public:
                self.add_header("Vary", "Host")  # built from the request: no cache may hand it to another name
            self.set_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.finish(
                json.dumps(
                    {
                        "meta": {"api-version": "1.0"},
                        "name": normalize(project),
                        "files": [
                            {
                                "filename": w.filename,
                                "url": f"{origin}{w.url}",
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
                f'<a href="{html.escape(w.url)}#sha256={w.sha256}">{html.escape(w.filename)}</a><br/>\n' for w in files
            )
        )
