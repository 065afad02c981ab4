"""`python -m server scenes`: an experiment's scene flow, drawn from the same `Experiment` the server serves.

Wrappers are drawn as what they do to each participant's order, games say that they
need Python, and the gates carry the lifecycle table's own guard words. It lives with the
experiment model, not in `statemachine`, so the lifecycle package never depends on the server.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import graphviz

from statemachine import TRANSITIONS
from statemachine.diagram import FORMATS, DiagramError, add_output_arguments, guard_words, render_svg, write

from .experiment import EndScene, Experiment, GymScene, RandomizeOrder, RepeatScene, StartScene
from .loader import DEFAULT, ExperimentError, load_experiment


def gate_words(source: str, dest: str) -> str:
    """The guards of `advance` from `source` to `dest`, in words, as the table declares them."""
    for t in TRANSITIONS:
        if t["trigger"] == "advance" and t["source"] == source and t["dest"] == dest:
            conditions = t.get("conditions") or []
            return " ∧ ".join(guard_words(c) for c in ([conditions] if isinstance(conditions, str) else conditions))
    return ""


@dataclass
class _Box:
    """A scene or a wrapper, numbered in drawing order."""

    key: str
    label: str
    kind: str  # "scene" or "group"
    python: bool = False
    children: list[_Box] = field(default_factory=list)


def _scene_label(scene: Any) -> tuple[str, bool]:
    if isinstance(scene, StartScene):
        return f"{scene.scene_id} (start page)\nscreening and Python preload run here", False
    if isinstance(scene, EndScene):
        code = f"\ncompletion code {scene.completion_code}" if scene.completion_code else ""
        return f"{scene.scene_id} (end page){code}", False
    if isinstance(scene, GymScene):
        gate = f"\ngate: {gate_words('ready', 'in_game')}"
        if not scene.run_through_pyodide:
            return f"{scene.scene_id} (game, no Python)\n{scene.environment}{gate}", False
        packages = f"\ninstalls {', '.join(scene.packages_to_install)}" if scene.packages_to_install else ""
        return f"{scene.scene_id} (game, needs Python in the page)\n{scene.environment}{packages}{gate}", True
    return f"{scene.scene_id} (page)", False


def _boxes(nodes: Sequence[Any], counter: list[int]) -> list[_Box]:
    out = []
    for node in nodes:
        counter[0] += 1
        key = f"n{counter[0]}"
        if isinstance(node, RandomizeOrder):
            keep = f", keep {node.keep_n} of {len(node.scenes)}" if node.keep_n is not None else ""
            out.append(_Box(key, f"randomized order{keep}", "group", children=_boxes(node.scenes, counter)))
        elif isinstance(node, RepeatScene):
            out.append(_Box(key, f"repeated {node.times} times", "group", children=_boxes((node.scene,), counter)))
        else:
            label, python = _scene_label(node)
            out.append(_Box(key, label, "scene", python=python))
    return out


def _first(box: _Box) -> str:
    return box.key if box.kind == "scene" else _first(box.children[0])


def _last(box: _Box) -> str:
    return box.key if box.kind == "scene" else _last(box.children[-1])


def scene_flow(experiment: Experiment, fmt: str = "mermaid") -> str:
    """The experiment's scenes in order as mermaid text, dot source or SVG."""
    if fmt not in FORMATS:
        raise DiagramError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    boxes = _boxes(experiment.scenes, [0])
    title = f"Scene flow of {experiment.name}"
    gate = f"gate: {gate_words('preflight', 'ready')}"
    if fmt == "mermaid":
        return _mermaid(boxes, title, gate)
    graph = _graphviz(boxes, title, gate)
    return graph.source if fmt == "dot" else render_svg(graph)


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("\n", "<br/>")


def _mermaid(boxes: list[_Box], title: str, gate: str) -> str:
    lines = ["---", f"title: {title}", "---", "flowchart LR", "  classDef python fill:#fff4d6,stroke:#b8860b"]

    def add(box: _Box, indent: str) -> None:
        if box.kind == "scene":
            lines.append(f'{indent}{box.key}["{_mermaid_text(box.label)}"]' + (":::python" if box.python else ""))
            return
        lines.append(f'{indent}subgraph {box.key}["{_mermaid_text(box.label)}"]')
        lines.append(f"{indent}  direction TB")
        for child in box.children:
            add(child, indent + "  ")
        lines.append(f"{indent}end")
        lines.append(f"{indent}style {box.key} fill:#f4f4f4,stroke:#888,stroke-dasharray:4 3")

    for box in boxes:
        add(box, "  ")
    for i, (a, b) in enumerate(itertools.pairwise(boxes)):
        label = f'|"{_mermaid_text(gate)}"|' if i == 0 else ""
        lines.append(f"  {a.key} -->{label} {b.key}")
    return "\n".join(lines) + "\n"


def _graphviz(boxes: list[_Box], title: str, gate: str) -> graphviz.Digraph:
    graph = graphviz.Digraph(
        title,
        graph_attr={"rankdir": "LR", "compound": "true", "label": title},
        node_attr={"shape": "rectangle", "style": "rounded,filled", "fillcolor": "white"},
    )

    def add(box: _Box, into: graphviz.Digraph) -> None:
        if box.kind == "scene":
            into.node(box.key, box.label, fillcolor="#fff4d6" if box.python else "white")
            return
        with into.subgraph(
            name=f"cluster_{box.key}", graph_attr={"label": box.label, "style": "dashed,filled", "fillcolor": "#f4f4f4"}
        ) as sub:
            for child in box.children:
                add(child, sub)

    for box in boxes:
        add(box, graph)
    for i, (a, b) in enumerate(itertools.pairwise(boxes)):
        attr = {"label": gate} if i == 0 else {}
        if a.kind == "group":
            attr["ltail"] = f"cluster_{a.key}"
        if b.kind == "group":
            attr["lhead"] = f"cluster_{b.key}"
        graph.edge(_last(a), _first(b), **attr)
    return graph


def main(argv: Iterable[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server scenes", description="Draw an experiment's scene flow, from the experiment itself."
    )
    parser.add_argument(
        "--experiment",
        default=DEFAULT,
        help="a Python file (path/to/study.py[:name]) or module defining an Experiment (default: the built-in example)",
    )
    add_output_arguments(parser)
    args = parser.parse_args(list(argv))
    try:
        write(scene_flow(load_experiment(args.experiment), args.format), args.output)
    except (ExperimentError, DiagramError) as exc:
        print(f"python -m server scenes: error: {exc}", file=sys.stderr)
        return 2
    return 0
