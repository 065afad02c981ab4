"""What drawing the lifecycle costs, and why the diagram machine stays out of the server.

Run: .venv/bin/python -m bench.diagrams [--repeat 9]
Times the generators in-process, the command end to end, mermaid rendering in Debian's
Chromium (the npm `mermaid` bundle), and attaching 1,000 plain models to the library's
HierarchicalMachine against its HierarchicalGraphMachine on the same table, in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from transitions.extensions.nesting import HierarchicalMachine

from client.harness import ROOT, launch_chromium
from statemachine import INITIAL, STATES, TRANSITIONS
from statemachine.diagram import _diagram_states, _DiagramMachine, _LabelledState, lifecycle


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def attach_us(machine_factory, n: int = 1000) -> float:
    machine = machine_factory()
    models = [type("M", (), {})() for _ in range(n)]
    t0 = time.perf_counter()
    for model in models:
        machine.add_model(model)
    return (time.perf_counter() - t0) / n * 1e6


def mermaid_in_chromium(repeat: int) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    text = lifecycle("mermaid")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page()
        page.set_content("<div id='out'></div>")
        t0 = time.perf_counter()
        page.add_script_tag(path=str(ROOT / "node_modules/mermaid/dist/mermaid.min.js"))
        page.evaluate("mermaid.initialize({startOnLoad: false})")
        times = []
        for i in range(repeat + 1):
            t = page.evaluate(
                """async ([text, id]) => {
                const t0 = performance.now();
                const {svg} = await mermaid.render(id, text);
                document.getElementById('out').innerHTML = svg;
                return performance.now() - t0;
            }""",
                [text, f"d{i}"],
            )
            times.append(t)
            if i == 0:
                first = (time.perf_counter() - t0) * 1000
        browser.close()
    return first, statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    r = args.repeat
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; medians of {r}")
    print(f"mermaid text, in-process      {median_ms(lambda: lifecycle('mermaid'), r):8.1f} ms")
    print(f"dot source, in-process        {median_ms(lambda: lifecycle('dot'), r):8.1f} ms")
    print(f"SVG (dot), in-process         {median_ms(lambda: lifecycle('svg'), r):8.1f} ms")
    cli = [sys.executable, "-m", "statemachine", "diagram", "--format", "svg"]
    run = lambda: subprocess.run(cli, cwd=ROOT, capture_output=True, check=True)  # noqa: E731
    print(f"python -m statemachine diagram --format svg  {median_ms(run, r):8.1f} ms (whole command)")
    first, warm = mermaid_in_chromium(r)
    print(f"mermaid in Chromium: first chart {first:.0f} ms (bundle load included), then {warm:.0f} ms a chart")

    plain = attach_us(_Plain)
    for engine in ("mermaid", "graphviz"):
        graph = attach_us(
            lambda: _DiagramMachine(
                model=None,
                states=_diagram_states(STATES),
                initial=INITIAL,
                auto_transitions=False,
                graph_engine=engine,
                transitions=[{k: t[k] for k in ("trigger", "source", "dest")} for t in TRANSITIONS],
            )
        )
        print(
            f"add_model, 1,000 models: HierarchicalMachine {plain:.1f} µs, HierarchicalGraphMachine "
            f"({engine}) {graph:.1f} µs ({graph / plain:.1f}×)"
        )


class _Plain(HierarchicalMachine):
    state_cls = _LabelledState

    def __init__(self) -> None:
        super().__init__(
            model=None,
            states=_diagram_states(STATES),
            initial=INITIAL,
            auto_transitions=False,
            transitions=[{k: t[k] for k in ("trigger", "source", "dest")} for t in TRANSITIONS],
        )


if __name__ == "__main__":
    main()
