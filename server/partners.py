"""AI partners' models, checked at start-up and served at content-hashed URLs the page preloads with Python.

Every `OnnxPolicy` a game scene names must be a file inside the study folder that the `onnx` package loads,
whose input (`input_name`, else the model's first) takes one flattened observation: the product of its
non-batch dimensions equals the policy's `input_size` when both are known. A model that fails stops the
server before anyone joins, like a missing package.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tornado.web

from .agents import Bot, OnnxPolicy, PythonPolicy
from .experiment import Experiment, GymScene
from .packages import top_level_names
from .runtime import RuntimeSetupError

MODEL_URL = "/models/"
ONNX_DIR = Path(__file__).resolve().parent.parent / "node_modules" / "onnxruntime-web" / "dist"
ONNX_URL = "/vendor/onnxruntime/"
ONNX_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
"""What the worker loads of onnxruntime-web: its WebAssembly build, run single-threaded (no cross-origin isolation)."""


class ModelError(RuntimeSetupError):
    """A scene's model is missing, unreadable, or does not take the observation the scene declares."""


@dataclass(frozen=True)
class Model:
    """One model file: where it is, its content hash (in its URL), its input and what it takes and gives."""

    path: str  # as the OnnxPolicy names it, relative to the experiment file
    file: Path
    sha256: str
    input_name: str
    input_size: int | None  # None when the model leaves a non-batch dimension dynamic
    outputs: int | None  # action scores per observation, when the model says
    data: bytes = field(default=b"", repr=False)  # what was hashed is what is served, even if the file changes

    @property
    def url(self) -> str:
        return f"{MODEL_URL}{self.sha256[:16]}/{self.file.name}"

    def page_config(self) -> dict[str, Any]:
        return {"path": self.path, "url": self.url, "input_name": self.input_name, "input_size": self.input_size}


def policies(experiment: Experiment) -> list[tuple[GymScene, str, OnnxPolicy]]:
    """Every (scene, agent, ONNX policy) the experiment can play."""
    found = []
    seen: set[int] = set()
    for scene in experiment.leaves():
        if not isinstance(scene, GymScene) or id(scene) in seen:
            continue
        seen.add(id(scene))
        for agent_id, agent in (scene.agents or {}).items():
            if isinstance(agent, Bot) and isinstance(agent.policy, OnnxPolicy):
                found.append((scene, agent_id, agent.policy))
    return found


def resolve_models(experiment: Experiment, experiment_file: Path | None) -> dict[str, Model]:
    """Check every ONNX policy's model and return them by path; `ModelError` names the first that fails."""
    models: dict[str, Model] = {}
    for scene, agent_id, policy in policies(experiment):
        where = f"scene {scene.scene_id!r}, agent {agent_id!r}"
        if experiment_file is None:
            raise ModelError(f"{where}: a model file needs an experiment file to be found beside")
        model = models.get(policy.path) or load_model(policy, experiment_file.parent, where)
        if policy.input_size is not None and model.input_size is not None and policy.input_size != model.input_size:
            raise ModelError(
                f"{where}: model {policy.path} takes {model.input_size} inputs ({model.input_name}), "
                f"but the policy declares input_size={policy.input_size}"
            )
        models[policy.path] = model
    return models


def load_model(policy: OnnxPolicy, folder: Path, where: str) -> Model:
    """Load one model with the `onnx` package and read its input, so a broken file never reaches a participant."""
    import onnx

    file = folder / policy.path
    if not file.is_file():
        raise ModelError(f"{where}: model file {policy.path} not found beside the experiment file ({folder})")
    data = file.read_bytes()
    try:
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"{where}: {policy.path} is not a usable ONNX model ({type(exc).__name__}: {reason})") from exc
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if not inputs:
        raise ModelError(f"{where}: model {policy.path} has no inputs")
    names = [i.name for i in inputs]
    name = policy.input_name or names[0]
    if name not in names:
        raise ModelError(f"{where}: model {policy.path} has no input {name!r}; its inputs are {', '.join(names)}")
    [value] = [i for i in inputs if i.name == name]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    features = dims[1:] if len(dims) > 1 else dims
    size = math.prod(d for d in features if d is not None) if features and None not in features else None
    out_dims = [
        d.dim_value if d.HasField("dim_value") else None for d in proto.graph.output[0].type.tensor_type.shape.dim
    ]
    outputs = out_dims[-1] if out_dims and out_dims[-1] else None
    return Model(policy.path, file, hashlib.sha256(data).hexdigest(), name, size, outputs, data)


def check_policy_functions(experiment: Experiment, experiment_file: Path | None) -> None:
    """A Python policy in a module beside the study must define its function at the top level; read, not run,
    since the module may import packages only the page has."""
    if experiment_file is None:
        return
    for scene in experiment.leaves():
        for agent_id, agent in (scene.agents or {}).items() if isinstance(scene, GymScene) else ():
            if not (isinstance(agent, Bot) and isinstance(agent.policy, PythonPolicy)):
                continue
            module, name = agent.policy.spec.split(":")
            path = experiment_file.parent / (module.replace(".", "/") + ".py")
            if not path.is_file():
                path = experiment_file.parent / module.replace(".", "/") / "__init__.py"
            if not path.is_file():
                continue  # from a package: the page's import finds it, or the game fails with a plain message
            names = top_level_names(path)
            if names is not None and name not in names:
                raise ModelError(
                    f"scene {scene.scene_id!r}, agent {agent_id!r}: policy {agent.policy.spec} not found: "
                    f"{path.name} defines no {name}"
                )


def check_onnxruntime(models: dict[str, Model]) -> None:
    """The page runs models with onnxruntime-web from node_modules; start-up says how to install it when absent."""
    missing = [f for f in ONNX_FILES if not (ONNX_DIR / f).is_file()]
    if models and missing:
        raise ModelError(f"onnxruntime-web not found in {ONNX_DIR} (missing {missing[0]}; run `npm ci`)")


class ModelFiles(tornado.web.RequestHandler):
    """The models by content hash: a URL's bytes never change, so browsers keep them for a year."""

    def initialize(self, models: dict[str, Model]) -> None:
        self.by_url = {model.url: model for model in models.values()}

    def get(self, digest: str, name: str) -> None:
        model = self.by_url.get(f"{MODEL_URL}{digest}/{name}")
        if model is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        self.finish(model.data)
