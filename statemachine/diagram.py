"""The lifecycle drawn from the table the server runs, with `transitions`' own diagram support.

The diagram machine is built here, on demand, and never attached to live sessions:
graph support makes every `add_model` several times dearer.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import graphviz
from transitions.extensions import diagrams_graphviz, diagrams_mermaid
from transitions.extensions.diagrams import HierarchicalGraphMachine
from transitions.extensions.nesting import NestedState

from .lifecycle import GUARD_LABELS, INITIAL, SEPARATOR, STATES, TRANSITIONS, TRIGGER_LABELS
from .match import MATCH_GUARD_LABELS, MATCH_INITIAL, MATCH_STATES, MATCH_TRANSITIONS, MATCH_TRIGGER_LABELS

TITLE = "Participant lifecycle"
FORMATS = ("mermaid", "dot", "svg")


@dataclass(frozen=True)
class Table:
    """One machine's declarative table and the words its diagram uses."""

    title: str
    states: list[Any]
    transitions: list[dict[str, Any]]
    initial: str
    guard_labels: dict[str, str]
    trigger_labels: dict[str, str]


LIFECYCLE = Table(TITLE, STATES, TRANSITIONS, INITIAL, GUARD_LABELS, TRIGGER_LABELS)
MATCH = Table(
    "Match lifecycle", MATCH_STATES, MATCH_TRANSITIONS, MATCH_INITIAL, MATCH_GUARD_LABELS, MATCH_TRIGGER_LABELS
)
MACHINES = {"lifecycle": LIFECYCLE, "match": MATCH}
"""The machines `python -m statemachine diagram --machine NAME` draws."""


class DiagramError(Exception):
    """A diagram that cannot be drawn here (Graphviz missing, dot failing); the message names the cause."""


def _guards(transition: dict[str, Any]) -> list[str]:
    conditions = transition.get("conditions") or []
    return [conditions] if isinstance(conditions, str) else list(conditions)


def guard_words(name: str, table: Table = LIFECYCLE) -> str:
    """A guard in the words a researcher reads; a guard without words falls back to its name."""
    return table.guard_labels.get(name, name.replace("_", " "))


def transition_label(index: int, newline: str = " ", table: Table = LIFECYCLE) -> str:
    """`trigger: what happens [guards]`; an unguarded one after guarded ones of its trigger reads `[otherwise]`."""
    transition = table.transitions[index]
    trigger = transition["trigger"]
    labels = table.trigger_labels
    label = f"{trigger}: {labels[trigger]}" if trigger in labels else trigger
    guards = _guards(transition)
    if guards:
        return f"{label}{newline}[{' ∧ '.join(guard_words(g, table) for g in guards)}]"
    earlier = [
        t
        for t in table.transitions[:index]
        if t["trigger"] == trigger and _guards(t) and set(_sources(t)) & set(_sources(transition))
    ]
    return f"{label}{newline}[otherwise]" if earlier else label


def _sources(transition: dict[str, Any]) -> list[str]:
    source = transition["source"]
    return [source] if isinstance(source, str) else list(source)


def _diagram_states(items: list[Any]) -> list[Any]:
    """The table's states without their callbacks; parallel states say so in their label."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
            continue
        state: dict[str, Any] = {"name": item["name"]}
        if item.get("final"):
            state["final"] = True
        if "initial" in item:
            state["initial"] = item["initial"]
        if "parallel" in item:
            regions = [r if isinstance(r, str) else r["name"] for r in item["parallel"]]
            state["label"] = f"{item['name']}: {' ∥ '.join(regions)} run in parallel"
            state["parallel"] = _diagram_states(item["parallel"])
        elif "children" in item:
            state["children"] = _diagram_states(item["children"])
        out.append(state)
    return out


def final_state_names(items: list[Any] = STATES, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every state marked final in the table, nested ones included, by full name."""
    out = []
    for item in items:
        if isinstance(item, dict):
            name = (*prefix, item["name"])
            if item.get("final"):
                out.append(SEPARATOR.join(name))
            out += final_state_names(item.get("parallel") or item.get("children") or [], name)
    return out


class _LabelledState(NestedState):
    separator = SEPARATOR

    def __init__(self, name: Any, *args: Any, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        if label:
            self.label = label


class _GraphvizGraph(diagrams_graphviz.NestedGraph):
    """Labels every edge in its middle: the library's head/tail labels for edges leaving a cluster collide."""

    def _create_edge_attr(self, src: str, dst: str, transition: dict[str, Any]) -> dict[str, Any]:
        attr = super()._create_edge_attr(src, dst, transition)
        position = attr["label_pos"]
        if position != "label":
            attr["label"] = attr.pop(position)
            attr["label_pos"] = "label"
        return attr

    def get_graph(self, title: str | None = None, roi_state: Any = None) -> Any:
        graph = super().get_graph(title, roi_state)
        graph.body = [line.replace(" | ", "\\n") for line in graph.body]  # one line per merged transition
        graph.node("__initial__", label="", shape="point", width="0.15", fillcolor="black")
        graph.edge("__initial__", self.machine.initial_name)
        return graph


class _MermaidGraph(diagrams_mermaid.NestedGraph):
    """Writes mermaid's documented syntax: a `title:` front matter and lower-case `class` lines."""

    def get_graph(self, title: str | None = None, roi_state: Any = None) -> Any:
        graph = super().get_graph(title, roi_state)
        lines = graph.source.split("\n")
        if lines[0] == lines[2] == "---" and ":" not in lines[1]:
            lines[1] = f"title: {lines[1]}"
        lines = [_lower_class(line) for line in lines]
        graph.source = "\n".join(lines) + "\n"
        return graph


def _lower_class(line: str) -> str:
    stripped = line.lstrip()
    return line[: len(line) - len(stripped)] + "class " + stripped[6:] if stripped.startswith("Class ") else line


class _DiagramMachine(HierarchicalGraphMachine):
    state_cls = _LabelledState
    initial_name = INITIAL  # where the graphviz drawing's start arrow points

    style_attributes: ClassVar[dict[str, Any]] = {  # type: ignore[misc]
        "node": {
            "default": {
                "style": "rounded,filled",
                "shape": "rectangle",
                "fillcolor": "white",
                "color": "black",
                "peripheries": "1",
            },
            "parallel": {
                "shape": "rectangle",
                "color": "black",
                "fillcolor": "white",
                "style": "dashed, rounded, filled",
                "peripheries": "1",
            },
            "final": {"peripheries": "2", "fillcolor": "#eeeeee"},
        },
        "edge": {"default": {"color": "black"}},
        "graph": {
            "default": {"color": "black", "fillcolor": "white", "style": "solid"},
            "parallel": {"color": "black", "fillcolor": "white", "style": "dashed"},
        },
    }

    def _init_graphviz_engine(self, graph_engine: str) -> type:
        return _MermaidGraph if graph_engine == "mermaid" else _GraphvizGraph


class _Model:
    """The diagram machine's only model; live sessions never meet this machine."""


def lifecycle_graph(engine: Literal["graphviz", "mermaid"], table: Table = LIFECYCLE) -> Any:
    """A machine as the library's graph object (`graphviz.Digraph` or mermaid text), no state highlighted."""
    machine = _DiagramMachine(
        model=None,
        states=_diagram_states(table.states),
        initial=table.initial,
        auto_transitions=False,
        transitions=[
            {
                "trigger": t["trigger"],
                "source": t["source"],
                "dest": t["dest"],
                "label": transition_label(i, " " if engine == "mermaid" else "\\n", table),
            }
            for i, t in enumerate(table.transitions)
        ],
        graph_engine=engine,
        title=table.title,
    )
    machine.initial_name = table.initial
    machine.add_model(_Model())
    model = machine.models[0]
    graph = machine.model_graphs[id(model)]
    graph.reset_styling()
    for name in final_state_names(table.states):
        graph.set_node_style(name, "final")
    return machine._get_graph(model, title=table.title)


def lifecycle(fmt: str = "mermaid", table: Table = LIFECYCLE) -> str:
    """A machine's diagram as mermaid text, Graphviz dot source or SVG (rendered by Graphviz's `dot`)."""
    if fmt not in FORMATS:
        raise DiagramError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "mermaid":
        return str(lifecycle_graph("mermaid", table).source)
    graph = lifecycle_graph("graphviz", table)
    graph.graph_attr["compound"] = "true"  # lets edges start and end at a cluster's border
    return graph.source if fmt == "dot" else render_svg(graph)


def render_svg(graph: graphviz.Digraph) -> str:
    """Run Graphviz's `dot` on a graph; a missing or failing `dot` is named, not raised as a traceback."""
    try:
        return str(graph.pipe(format="svg", engine="dot").decode())
    except graphviz.ExecutableNotFound:
        raise DiagramError(
            "Graphviz's `dot` is not installed (Debian: apt-get install graphviz; "
            "`make test` and `make serve` install it)"
        ) from None
    except graphviz.CalledProcessError as exc:
        raise DiagramError(f"dot failed: {(exc.stderr or b'').decode(errors='replace').strip()}") from None


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """`--format` and `--output`, the same for every command that draws a diagram."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="mermaid",
        help="mermaid text, Graphviz dot source, or SVG rendered by Graphviz (default: %(default)s)",
    )
    parser.add_argument("--output", "-o", type=Path, default=None, help="write to FILE instead of standard output")


def write(text: str, output: Path | None) -> None:
    """Standard output, or the named file; a file that cannot be written is a DiagramError naming it."""
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DiagramError(f"cannot write {output}: {exc.strerror}") from None
