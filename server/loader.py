"""Find the researcher's `Experiment` in a Python file or module, with errors that name the problem."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from .experiment import Experiment

DEFAULT = "server.examples.gridworld"


class ExperimentError(Exception):
    """The experiment could not be loaded; the message says why, for the command line."""


def load_experiment(spec: str = DEFAULT) -> Experiment:
    """Load `path/to/file.py[:name]` or `package.module[:name]`; `name` defaults to `experiment`."""
    target, _, attr = spec.partition(":")
    attr = attr or "experiment"
    module = _load_file(Path(target)) if target.endswith(".py") or "/" in target else _load_module(target)
    value = getattr(module, attr, None)
    if value is None:
        raise ExperimentError(f"{target} defines no {attr!r}: assign your Experiment(...) to a variable named {attr}")
    if not isinstance(value, Experiment):
        raise ExperimentError(f"{target}:{attr} is a {type(value).__name__}, not an Experiment")
    return value


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
        raise ExperimentError(f"{path} failed to load: {_where(exc)}") from exc
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


def _where(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    place = f" (line {frame.lineno} of {frame.filename})" if frame else ""
    return f"{type(exc).__name__}: {exc}{place}"
