"""AI partners in the loop: ONNX inference per tick in the worker, the tick rate it leaves, and model preload time.

Run: .venv/bin/python -m bench.partners [--runs 1]

Builds two models with the `onnx` package (random fixed weights): a small MLP (6→64→64→5, ~4.9k parameters)
and a 1M-parameter MLP (6→1024→1024→5, ~1.06M parameters), writes a study of the coop example with one
scene per (model, fps) pair, fps 10 and 30, each a human (idle, the default action) and an ONNX bot choosing
every tick, and plays it in headless Chromium against `python -m server`. From the recorded steps:

* bot ms per tick: the step's `bot_ms`, the time the worker spent choosing the bot's action (flattening the
  observation in Python, `session.run`, sampling in Python) before the step, p50/p99;
* tick rate: steps per second from the steps' `t` stamps (first to last), against the scene's fps;
* preload: experiment_config (sent, server time) to the `ready` report (received); and from the preload
  reports, the `models` stage (onnxruntime-web and both models loaded, their sessions created) and `ready`,
  in ms since the page asked to load Python (shortly after it handled `experiment_config`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper, numpy_helper

from client.harness import ROOT, launch_chromium, records_of, served
from client.stats import percentile

EXAMPLE = ROOT / "server" / "examples" / "partners"
MODELS = {"small": (6, 64, 64, 5), "1m": (6, 1024, 1024, 5)}
RATES = {10: 100, 30: 150}  # fps -> steps per scene


def mlp(sizes: tuple[int, ...], seed: int) -> onnx.ModelProto:
    """Dense layers with ReLU between them, weights drawn from a seeded Gaussian; input [1, sizes[0]]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    nodes, inits, last = [], [], "observation"
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype("float32"), f"W{k}")
        bias = numpy_helper.from_array(np.zeros(b, dtype="float32"), f"B{k}")
        inits += [w, bias]
        nodes += [
            helper.make_node("MatMul", [last, f"W{k}"], [f"m{k}"]),
            helper.make_node("Add", [f"m{k}", f"B{k}"], [f"a{k}"]),
        ]
        last = f"a{k}"
        if k < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{k}"]))
            last = f"r{k}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, [1, sizes[0]])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def write_study(directory: Path) -> dict[str, int]:
    shutil.copy(EXAMPLE / "coop_env.py", directory)
    shutil.copy(EXAMPLE / "policies.py", directory)
    (directory / "models").mkdir()
    params = {}
    for name, sizes in MODELS.items():
        model = mlp(sizes, random.Random(name).randrange(2**31))
        onnx.save(model, directory / "models" / f"{name}.onnx")
        params[name] = sum(int(math.prod(t.dims)) for t in model.graph.initializer)
    scenes = []
    for name in MODELS:
        for fps, steps in RATES.items():
            scenes.append(
                f'GymScene("{name}_{fps}", "coop_env:make", env_kwargs={{"stars": 10000, "max_steps": {steps}}}, '
                f"fps={fps}, max_steps={steps}, agents={{"
                f'"chef_0": Human(keys={{"ArrowUp": 0}}, default_action=4), '
                f'"chef_1": Bot(OnnxPolicy("models/{name}.onnx", input_size=6))}}),'
            )
    (directory / "study.py").write_text(
        "from server.agents import Bot, Human, OnnxPolicy\n"
        "from server.experiment import EndScene, Experiment, GymScene, StartScene\n\n"
        'experiment = Experiment(name="partners-bench", scenes=[StartScene(),\n    '
        + "\n    ".join(scenes)
        + '\n    EndScene(completion_code="DONE")])\n'
    )
    return params


def play(url: str, participant: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_context().new_page()
            page.goto(f"{url}?PROLIFIC_PID={participant}")
            for scene in [f"{m}_{f}" for m in MODELS for f in RATES]:
                page.wait_for_function("window.__preflight.state?.may_advance === true", timeout=180_000)
                page.click("#advance")
                page.wait_for_function(
                    f"window.__preflight.state?.scene_id === '{scene}' && window.__preflight.state?.state === 'ready'",
                    timeout=120_000,
                )
        finally:
            browser.close()


def measure(records: list[dict[str, Any]]) -> dict[str, Any]:
    steps: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "steps":
            steps.setdefault(r["scene_id"], []).extend(r["steps"])
    out: dict[str, Any] = {}
    for scene, played in steps.items():
        bot = sorted(s["bot_ms"] for s in played)
        t = [s["t"] for s in played]
        gaps = sorted(b - a for a, b in itertools.pairwise(t))
        out[scene] = {
            "steps": len(played),
            "bot_ms_p50": round(percentile(bot, 50), 2),
            "bot_ms_p99": round(percentile(bot, 99), 2),
            "ticks_per_s": round((len(t) - 1) / ((t[-1] - t[0]) / 1000), 2),
            "tick_gap_ms_p99": percentile(gaps, 99),
        }
    preload: dict[str, Any] = {}
    for r in records:
        if r["kind"] == "preload":
            preload.setdefault(r.get("stage", r["status"]), r.get("elapsed_ms"))
    out["preload_ms"] = {k: preload.get(k) for k in ("runtime", "packages", "models", "preparing", "ready")}
    config_t = next((r["t"] for r in records if _type(r) == "experiment_config"), None)
    ready_t = next((r["t"] for r in records if r["kind"] == "preload" and r.get("status") == "ready"), None)
    if config_t is not None and ready_t is not None:
        out["experiment_config_to_ready_ms"] = round(1000 * (ready_t - config_t))
    return out


def _type(record: dict[str, Any]) -> str | None:
    """A recorded frame's message type, wherever the record keeps it."""
    message = record.get("message")
    return message.get("type") if isinstance(message, dict) else record.get("type")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        study.mkdir()
        params = write_study(study)
        print(json.dumps({"parameters": params, "machine": platform.platform()}))
        for run in range(args.runs):
            data = Path(tmp) / f"data{run}"
            with served(data, "--experiment", str(study / "study.py")) as url:
                play(url, f"bench{run}")
            print(json.dumps(measure(records_of(data, f"bench{run}")), indent=1))


if __name__ == "__main__":
    main()
