"""Find the researcher's `Experiment` in a Python file or module, with errors that name the problem."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .experiment import Experiment

DEFAULT = "server.examples.gridworld.study"


class ExperimentError(Exception):
    """The experiment could not be loaded; the message says why, for the command line."""


@dataclass(frozen=True)
class StudySource:
    """An experiment and the file that defined it, whose folder holds the researcher's own game modules."""

    experiment: Experiment
    file: Path  # absolute

    @property
    def directory(self) -> Path:
        return self.file.parent


def load_experiment(spec: str = DEFAULT) -> Experiment:
    """Load `path/to/file.py[:name]` or `package.module[:name]`; `name` defaults to `experiment`."""
    return load_study(spec).experiment


def load_study(spec: str = DEFAULT) -> StudySource:
    """`load_experiment`, also saying which file the experiment came from (for a module, its file)."""
    target, _, attr = spec.partition(":")
    attr = attr or "experiment"
    module = _load_file(Path(target)) if target.endswith(".py") or "/" in target else _load_module(target)
    value = getattr(module, attr, None)
    if value is None:
        raise ExperimentError(f"{target} defines no {attr!r}: assign your Experiment(...) to a variable named {attr}")
    if not isinstance(value, Experiment):
        raise ExperimentError(f"{target}:{attr} is a {type(value).__name__}, not an Experiment")
    if module.__file__ is None:
        raise ExperimentError(f"{target} is a namespace package: put the experiment in a module file")
    return StudySource(value, Path(module.__file__).resolve())


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ExperimentError(f"experiment file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"preflight_experiment_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ExperimentError(f"{path} failed to load: {_where(exc, path)}") from exc
    return module


def _load_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ExperimentError(
                f"no experiment module named {name!r} (give a .py path or an importable module)"
            ) from exc
        raise ExperimentError(f"{name} failed to load: {_where(exc)}") from exc
    except Exception as exc:
        raise ExperimentError(f"{name} failed to load: {_where(exc)}") from exc


def _where(exc: BaseException, file: Path | None = None) -> str:
    """The error and the line that raised it, preferring the experiment file's own line over library internals."""
    if isinstance(exc, SyntaxError):  # its message names the file and line; its traceback is importlib's
        return f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    own = [f for f in frames if file is not None and Path(f.filename).resolve() == file.resolve()]
    frame = (own or frames)[-1] if frames else None
    place = f" (line {frame.lineno} of {frame.filename})" if frame else ""
    return f"{type(exc).__name__}: {exc}{place}"
