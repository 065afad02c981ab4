"""What each game scene installs in the page, resolved at start-up against the files this server serves.

Three sources, checked in this order for what a scene lists in `packages_to_install`:
the Pyodide distribution's lock (`pyodide.loadPackage`, for binary packages such as numpy),
the wheelhouse (our own index), and the researcher's own modules beside the experiment file,
which are packed here into wheels named `preflight-local-<module>`. Each wheel's
`Requires-Dist` is followed the way micropip follows it (our index first, then the lock).
A scene whose packages or environment module cannot be found stops the server before
anyone joins, with the command that fetches what is missing.

Since every wheel is resolved here, the page needs no installer: it fetches the exact wheels listed
(`wheels` in `pyodide_config`, fetched while Python boots) and unpacks each into site-packages. Only a
study whose resolution could not be finished here (a distribution hosted elsewhere, whose lock cannot be
read) or whose wheels are not pure Python is left to micropip in the page, as before.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import logging
import os
import shlex
import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .experiment import Experiment, GymScene
from .locations import study_cache
from .runtime import Runtime, RuntimeSetupError, Wheel, normalize

log = logging.getLogger("preflight")

LOCAL_PREFIX = "preflight-local-"
"""Local modules' projects start with this, and one the wheelhouse or the lock already has is refused."""
CACHE = "wheels"
"""Where local modules' wheels are kept, in the study's cache (`.preflight/` beside the experiment file)."""
LOCAL_URL = "/local-wheels/"
_EPOCH = (1980, 1, 1, 0, 0, 0)
_BROWSER_PLATFORMS = ("any", "emscripten", "pyodide", "pyemscripten")


class PackageError(RuntimeSetupError):
    """A scene needs something the server cannot serve; the message says what and how to bring it."""


@dataclass(frozen=True)
class WheelContents:
    """What start-up needs from a wheel: its requirements and the top-level modules it installs."""

    requires: tuple[str, ...]
    modules: frozenset[str]


def wheel_contents(path: Path) -> WheelContents:
    """Read `Requires-Dist` from the wheel's METADATA and its top-level names from its file list."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            [metadata] = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            headers = HeaderParser().parsestr(archive.read(metadata).decode("utf-8"))
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise PackageError(f"{path} is not a usable wheel ({type(exc).__name__}: {exc})") from exc
    modules = set()
    for name in names:
        parts = name.split("/")
        if parts[0].endswith(".data") and len(parts) > 3 and parts[1] in ("purelib", "platlib"):
            parts = parts[2:]
        if parts[0].endswith((".dist-info", ".data")):
            continue
        top = parts[0] if len(parts) > 1 else parts[0].split(".", 1)[0] if parts[0].endswith((".py", ".so")) else ""
        if top.isidentifier():
            modules.add(top)
    return WheelContents(tuple(headers.get_all("Requires-Dist") or ()), frozenset(modules))


def local_project(module: str) -> str:
    """The project name a local module is packed under: `catch_env` becomes `preflight-local-catch-env`."""
    return normalize(LOCAL_PREFIX + module)


def find_local_modules(experiment: Experiment, experiment_file: Path) -> dict[str, Path]:
    """Each game's module that is a `.py` file or a package folder beside the experiment file, by name."""
    found: dict[str, Path] = {}
    directory = experiment_file.parent
    for scene in _games(experiment):
        for name in scene.modules:
            package, single = directory / name, directory / f"{name}.py"
            path = package if (package / "__init__.py").is_file() else single if single.is_file() else None
            if path is None:
                continue
            if path.resolve() == experiment_file.resolve():
                raise PackageError(
                    f"scene {scene.scene_id!r}: {_role(scene, name)} module {name!r} is the experiment file itself; "
                    f"put it in a file of its own beside it (the page has no `server` package to import)"
                )
            found[name] = path
    return found


def top_level_names(path: Path) -> set[str] | None:
    """What a module defines at its top level, or None when that cannot be told without running it."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return None
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            return None  # conditional definitions: leave them to the page
    return None if "__getattr__" in names else names


def check_local_sources(experiment: Experiment, modules: dict[str, Path]) -> None:
    """What can be told of the study's own modules without running them: an environment factory the module does
    not define stops start-up (`PackageError`); a syntax error is named with its line in the log at once (the
    page's Python is newer than the server's, so the server's parser may refuse what the page accepts)."""
    for source in modules.values():
        for path in [source] if source.is_file() else sorted(source.rglob("*.py")):
            try:
                ast.parse(path.read_text(), str(path))
            except SyntaxError as exc:
                log.warning(
                    "%s, line %s: %s: %s (checked with this server's Python; the game will fail in the page if "
                    "its Python agrees)",
                    path,
                    exc.lineno,
                    type(exc).__name__,
                    exc.msg,
                )
            except (OSError, UnicodeDecodeError, ValueError):
                continue
    for scene in _games(experiment):
        module, _, factory = scene.environment.partition(":")
        factory = factory.split(".")[0]
        file = modules.get(module)
        if file is None or not file.is_file() or not factory:
            continue
        names = top_level_names(file)
        if names is not None and factory not in names:
            raise PackageError(
                f"scene {scene.scene_id!r}: environment {scene.environment} not found: {file.name} defines no {factory}"
            )


def build_local_wheel(module: str, source: Path, cache: Path) -> Wheel:
    """A wheel of `source` (a module file or package folder) in `cache`, named after its content's hash.

    The same content always gives the same bytes, so a wheel already in the cache is reused as it is.
    """
    files = _module_files(module, source)
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    project = local_project(module)
    version = f"0.0.0+{digest.hexdigest()[:12]}"
    stem = project.replace("-", "_")
    filename = f"{stem}-{version}-py3-none-any.whl"
    path = cache / filename
    try:
        if not path.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            partial = cache / f".{filename}.{os.getpid()}"
            partial.write_bytes(_wheel_bytes(project, version, module, files))
            partial.replace(path)
            for stale in cache.glob(f"{stem}-*.whl"):
                if stale != path:
                    stale.unlink(missing_ok=True)
        data = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"cannot write the wheel of {module} to {cache}: {exc.strerror or exc}") from exc
    return Wheel(project, filename, hashlib.sha256(data).hexdigest(), path, LOCAL_URL + filename)


def _module_files(module: str, source: Path) -> list[tuple[str, bytes]]:
    try:
        if source.is_file():
            return [(f"{module}.py", source.read_bytes())]
        files = []
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            hidden = any(p.startswith(".") or p == "__pycache__" for p in relative.parts)
            if path.is_file() and not hidden and path.suffix not in (".pyc", ".pyo"):
                files.append((f"{module}/{relative.as_posix()}", path.read_bytes()))
        return files
    except OSError as exc:
        raise PackageError(f"cannot read {source}: {exc.strerror or exc}") from exc


def _wheel_bytes(project: str, version: str, module: str, files: list[tuple[str, bytes]]) -> bytes:
    dist_info = f"{project.replace('-', '_')}-{version}.dist-info"
    metadata = [
        (
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
            f"Summary: {module}, packed by Preflight from the experiment's folder\n".encode(),
        ),
        (f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: preflight\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{dist_info}/top_level.txt", f"{module}\n".encode()),
    ]
    record = "".join(f"{name},sha256={_urlsafe_digest(data)},{len(data)}\n" for name, data in [*files, *metadata])
    record += f"{dist_info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in [*files, *metadata, (f"{dist_info}/RECORD", record.encode())]:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def _urlsafe_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class Packages:
    """The outcome of the start-up check: what the page loads from where, and the local wheels to serve."""

    pyodide_packages: tuple[str, ...]  # lock entry names, for pyodide.loadPackage
    packages_to_install: tuple[str, ...]  # requirements micropip installs from our index, local projects included
    local: tuple[Wheel, ...] = ()
    cache: Path | None = None  # where `local` is, served at LOCAL_URL
    wheels: tuple[Wheel, ...] | None = None  # every wheel the scenes need, resolved; None: left to micropip

    def page_config(self, micropip: bool = False) -> dict[str, Any]:
        """The part of `pyodide_config` that says what to install; the page decides none of it.

        `wheels` lists the exact files the page unpacks without micropip; it is None (and the page loads micropip
        and installs `packages_to_install` from our index) when the resolution is not complete or `micropip` asks.
        """
        direct = None if micropip or self.wheels is None else self.wheels
        return {
            "pyodide_packages": list(self.pyodide_packages),
            "packages_to_install": list(self.packages_to_install),
            "wheels": None
            if direct is None
            else [{"name": w.project, "url": w.url, "sha256": w.sha256} for w in direct],
        }


def resolve_packages(experiment: Experiment, experiment_file: Path | None, runtime: Runtime) -> Packages:
    """Pack the local modules, then check every scene's packages and environment module; `PackageError` if not."""
    local: dict[str, Wheel] = {}
    cache = None
    modules: dict[str, Path] = {}
    if experiment_file is not None:
        modules = find_local_modules(experiment, experiment_file)
        cache = study_cache(experiment_file.parent) / CACHE if modules else None
        for module, source in modules.items():
            project = local_project(module)
            if project in runtime.wheels or project in (runtime.distribution or {}):
                raise PackageError(
                    f"{module} beside {experiment_file.name} would be served as {project}, a name "
                    f"{'the wheelhouse' if project in runtime.wheels else 'the Pyodide distribution'} already has; "
                    f"rename the module or remove that package"
                )
            assert cache is not None
            local[module] = build_local_wheel(module, source, cache)
    resolver = _Resolver(runtime, local, experiment_file)
    for scene in _games(experiment):
        resolver.scene(scene)
    check_local_sources(experiment, modules)
    wheels = {**resolver.wheels, **{w.filename: w for w in local.values()}}
    projects = [w.project for w in wheels.values()]
    direct = not resolver.unchecked and len(set(projects)) == len(projects) and all(map(_pure, wheels.values()))
    return Packages(
        tuple(sorted(resolver.from_lock)),
        tuple(sorted(resolver.from_index | {w.project for w in local.values()})),
        tuple(local[m] for m in sorted(local)),
        cache,
        tuple(wheels[name] for name in sorted(wheels)) if direct else None,
    )


def _pure(wheel: Wheel) -> bool:
    """A wheel with no compiled code for the browser: unpacking it is all its install is (no dynamic libraries)."""
    try:
        return all(tag.platform == "any" for tag in parse_wheel_filename(wheel.filename)[3])
    except (InvalidWheelFilename, InvalidVersion):
        return False


def _games(experiment: Experiment) -> list[GymScene]:
    seen: dict[int, GymScene] = {}
    for scene in experiment.leaves():
        if isinstance(scene, GymScene):
            seen.setdefault(id(scene), scene)
    return list(seen.values())


@dataclass
class _Walk:
    """What one scene's packages bring into the page, followed through their requirements."""

    modules: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    unchecked: bool = False  # something was left to a distribution hosted elsewhere, whose lock we cannot read


class _Resolver:
    """Follows each scene's packages through the sources the page will use, in micropip's order."""

    def __init__(self, runtime: Runtime, local: dict[str, Wheel], experiment_file: Path | None) -> None:
        self.runtime = runtime
        self.local_modules = set(local)
        self.local_projects = {wheel.project for wheel in local.values()}
        self.experiment_file = experiment_file
        self.from_lock: set[str] = set()  # lock entries for pyodide.loadPackage, those wheels need included
        self.from_index: set[str] = set()
        self.wheels: dict[str, Wheel] = {}  # by file name: every wheelhouse wheel some scene installs
        self.unchecked = False  # some scene left a package to a distribution whose lock cannot be read
        python = runtime.python_version
        self.environment = {
            "python_version": ".".join(python.split(".")[:2]),
            "python_full_version": python,
            "implementation_name": "cpython",
            "implementation_version": python,
            "platform_python_implementation": "CPython",
            "sys_platform": "emscripten",
            "platform_system": "Emscripten",
            "os_name": "posix",
            "platform_machine": "wasm32",
            "platform_release": "",
            "platform_version": "",
        }
        self.contents: dict[Path, WheelContents] = {}

    def scene(self, scene: GymScene) -> None:
        walk = _Walk()
        for text in scene.packages_to_install:
            req = self._parse(text, f"scene {scene.scene_id!r}: packages_to_install entry")
            if req.url:
                raise PackageError(
                    f"scene {scene.scene_id!r}: packages_to_install entry {text!r} names a URL, which the page "
                    f"would fetch from elsewhere; put the wheel in the wheelhouse and list its name"
                )
            if req.marker is not None and not self._holds(req.marker, ""):
                continue
            name = normalize(req.name)
            walk.seen.add(name)
            entry = self._lock_entry(req)
            if entry is not None:
                self.from_lock.add(entry["name"])
                self._walk_lock(entry, scene, walk)
            elif name in self.local_projects:
                self.from_index.add(name)
            elif (wheel := self._wheel(req)) is not None:
                self.from_index.add(text.strip())
                self._walk_wheel(wheel, req, scene, walk)
            elif self.runtime.distribution is None:
                self.from_lock.add(req.name)
                walk.unchecked = True
                log.warning(
                    "scene %r: %s is left to the Pyodide distribution at %s, which cannot be checked from here",
                    scene.scene_id,
                    text,
                    self.runtime.pyodide_url,
                )
            else:
                raise self._missing(scene, req, None)
        self.unchecked |= walk.unchecked
        for module in scene.modules:
            if module in self.local_modules or module in walk.modules or walk.unchecked:
                continue
            beside = self.experiment_file.name if self.experiment_file is not None else "the experiment file"
            raise PackageError(
                f"scene {scene.scene_id!r}: {_role(scene, module)} module {module!r} not found: put {module}.py "
                f"beside {beside}, or add the package that provides it to packages_to_install"
            )

    def _walk_wheel(self, wheel: Wheel, req: Requirement, scene: GymScene, walk: _Walk) -> None:
        self.wheels[wheel.filename] = wheel
        if wheel.path not in self.contents:
            self.contents[wheel.path] = wheel_contents(wheel.path)
        contents = self.contents[wheel.path]
        walk.modules |= contents.modules
        extras = {"", *req.extras}
        by = f"{wheel.project} {wheel.version}"
        for line in contents.requires:
            dep = self._parse(line, f"{wheel.filename}: Requires-Dist")
            if dep.marker is not None and not any(self._holds(dep.marker, e) for e in extras):
                continue
            name = normalize(dep.name)
            if name in walk.seen:
                continue
            walk.seen.add(name)
            if (found := self._wheel(dep)) is not None:  # micropip asks our index first, then the lock
                self._walk_wheel(found, dep, scene, walk)
            elif (entry := self._lock_entry(dep)) is not None:
                self.from_lock.add(entry["name"])  # what micropip would have loaded; the page loads it directly
                self._walk_lock(entry, scene, walk)
            elif self.runtime.distribution is None:
                walk.unchecked = True
            else:
                raise self._missing(scene, dep, by)

    def _walk_lock(self, entry: dict[str, Any], scene: GymScene, walk: _Walk) -> None:
        walk.modules |= set(entry["imports"])
        for dep in entry["depends"]:
            name = normalize(dep)
            if name in walk.seen:
                continue
            walk.seen.add(name)
            found = (self.runtime.distribution or {}).get(name)
            if found is None:
                raise self._missing(scene, Requirement(name), f"{entry['name']} {entry['version']}")
            self._walk_lock(found, scene, walk)

    def _download(self, requirement: str, wheelhouse: str) -> str:
        """The pip command that fetches a wheel for the page's Python and no other platform."""
        return (
            f"pip download --no-deps --only-binary=:all: --python-version {self.environment['python_version']} "
            f"--platform any --dest {shlex.quote(wheelhouse)} {shlex.quote(requirement)}"
        )

    def _holds(self, marker: Marker, extra: str) -> bool:
        return marker.evaluate({**self.environment, "extra": extra})

    def _parse(self, text: object, what: str) -> Requirement:
        if not isinstance(text, str):
            raise PackageError(f"{what} {text!r} is a {type(text).__name__}; give requirements as strings")
        try:
            return Requirement(text)
        except InvalidRequirement as exc:
            raise PackageError(f"{what} {text!r} is not a requirement: {str(exc).splitlines()[0]}") from exc

    def _lock_entry(self, req: Requirement) -> dict[str, Any] | None:
        entry = (self.runtime.distribution or {}).get(normalize(req.name))
        if entry is None or not req.specifier.contains(entry["version"], prereleases=True):
            return None
        return entry

    def _wheel(self, req: Requirement) -> Wheel | None:
        """The newest wheelhouse wheel that fits the requirement and runs in the browser, as micropip would pick."""
        candidates: dict[Version, Wheel] = {}
        for wheel in self.runtime.wheels.get(normalize(req.name), []):
            if wheel.project in self.local_projects:
                continue
            try:
                _, version, _, tags = parse_wheel_filename(wheel.filename)
            except (InvalidWheelFilename, InvalidVersion):
                continue
            if any(tag.platform.startswith(_BROWSER_PLATFORMS) for tag in tags):
                candidates.setdefault(version, wheel)
        versions = list(req.specifier.filter(candidates))
        return candidates[max(versions)] if versions else None

    def _missing(self, scene: GymScene, req: Requirement, by: str | None) -> PackageError:
        runtime = self.runtime
        wheelhouse, distribution = _shown(runtime.wheelhouse), _shown(runtime.pyodide_dir or Path("."))
        name, requirement = normalize(req.name), f"{req.name}{req.specifier}"
        needs = f"scene {scene.scene_id!r} needs package {requirement!r}" + (f" (required by {by})" if by else "")
        there = runtime.wheels.get(name, [])
        locked = (runtime.distribution or {}).get(name)
        if there or locked:
            has = [w.filename for w in there] + ([f"{locked['name']} {locked['version']}"] if locked else [])
            return PackageError(
                f"{needs}, but the wheelhouse ({wheelhouse}) and the Pyodide distribution ({distribution}) have "
                f"only {', '.join(has)}, which does not match it or does not run in the browser; "
                f"fetch a pure-Python wheel with: {self._download(requirement, wheelhouse)}"
            )
        return PackageError(
            f"{needs}, which is not in the wheelhouse ({wheelhouse}) nor in the Pyodide distribution ({distribution}); "
            + (
                "it is a Pyodide package this distribution does not ship: serve the full Pyodide release with "
                "--pyodide-dir (README: Bringing packages)"
                if name in runtime.unshipped
                else f"fetch a pure-Python wheel with: {self._download(requirement, wheelhouse)}"
            )
        )


def _role(scene: GymScene, module: str) -> str:
    return "environment" if module == scene.module else "policy"


def _shown(path: Path) -> str:
    """A path as the researcher would type it: relative to the working directory when it is inside it."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return str(path)
