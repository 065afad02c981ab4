"""Cost of the shared lifecycle machine: attach, one trigger, memory per session.

Run: .venv/bin/python -m bench.machine [--sessions 10000]
Compares SessionMachine with the library's own HierarchicalMachine.add_model on the
same table in the same run, since absolute timings on a shared machine are noise.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc

from transitions.extensions.nesting import HierarchicalMachine

from server.examples.gridworld.study import experiment
from server.session import Session
from statemachine import INITIAL, STATES, TRANSITIONS, SessionMachine
from statemachine.lifecycle import _State


class Clock:
    def call_later(self, delay, callback):
        return None

    def remove_timeout(self, handle):
        pass


class LibraryMachine(HierarchicalMachine):
    """The table on the library's stock add_model/remove_model (list scan, bound helpers)."""

    state_cls = _State

    def __init__(self) -> None:
        super().__init__(
            model=None,
            states=STATES,
            transitions=TRANSITIONS,
            initial=INITIAL,
            auto_transitions=False,
            send_event=True,
            before_state_change="record_transition",
            after_state_change="publish_state",
        )

    def fire(self, model, trigger, *args):
        return self.trigger_event(model, trigger, *args)

    def allows(self, model, trigger):
        return bool(self._can_trigger(model, trigger))


class Detached(Session):
    """A session built without attaching, so attach alone can be timed."""

    __slots__ = ()

    def __init__(self, machine) -> None:
        machine.add_model = lambda model: None
        try:
            super().__init__(machine, experiment, Clock(), lambda m: None)
        finally:
            del machine.add_model


def attach_cost(machine_cls, n: int) -> tuple[float, float, float]:
    """Microseconds per attach for the first and last 1,000 of n, and per detach of all."""
    machine = machine_cls()
    sessions = [Detached(machine) for _ in range(n)]
    gc.disable()
    t0 = time.perf_counter()
    for s in sessions[:1000]:
        machine.add_model(s)
    t1 = time.perf_counter()
    for s in sessions[1000:-1000]:
        machine.add_model(s)
    t2 = time.perf_counter()
    for s in sessions[-1000:]:
        machine.add_model(s)
    t3 = time.perf_counter()
    for s in sessions:
        machine.remove_model(s)
    t4 = time.perf_counter()
    gc.enable()
    return (t1 - t0) / 1000 * 1e6, (t3 - t2) / 1000 * 1e6, (t4 - t3) / n * 1e6


def trigger_cost(machine_cls, n: int) -> tuple[float, float]:
    """Microseconds per internal trigger (game_event) and per external pair (game_over + advance into a game)."""
    machine = machine_cls()
    game = {"type": "game_event", "step": 1}
    s = Session(machine, experiment, Clock(), lambda m: None)
    for trig, msg in [
        ("hello", {}),
        ("screening", {"facts": {"webassembly": True, "screen_width": 2000, "screen_height": 2000}}),
        ("preload", {"status": "ready"}),
        ("advance", {}),
        ("advance", {}),
    ]:
        s.rtt_ms = 1.0
        s.user_agent = "Chrome/1"
        s.fire(trig, msg)
    assert s.state == "in_game", s.state
    t0 = time.perf_counter()
    for _ in range(n):
        s.fire("game_event", game)
    t1 = time.perf_counter()
    for _ in range(n // 10):
        s.fire("game_over", {})
        s.index -= 1
        s.fire("advance", {})
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t1) / (n // 10) / 2 * 1e6


def memory_per_session(machine_cls, n: int) -> float:
    machine = machine_cls()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    sessions = [Session(machine, experiment, Clock(), lambda m: None) for _ in range(n)]
    for s in sessions:
        machine.fire(s, "hello", {})
    after = tracemalloc.get_traced_memory()[0]
    for s in sessions:
        machine.remove_model(s)
    del sessions
    gc.collect()
    left = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n, (left - before) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    args = parser.parse_args()
    n = args.sessions
    rows = []
    for name, cls in (("SessionMachine (ours)", SessionMachine), ("library add_model", LibraryMachine)):
        first, last, detach = attach_cost(cls, n)
        internal, external = trigger_cost(cls, 20_000)
        mem, left = memory_per_session(cls, n)
        rows.append((name, first, last, detach, internal, external, mem, left))
    print(f"sessions: {n}; python {sys.version.split()[0]}; {os.cpu_count()} cpus")
    head = (
        "machine",
        "attach µs (first 1k)",
        f"attach µs (last 1k of {n})",
        "detach µs",
        "game_event µs",
        "external trigger µs",
        "bytes/session (in preflight)",
        "bytes left/session after detach",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(
            f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:,.0f} | {r[7]:,.0f} |"
        )
    ours, lib = rows
    print(
        f"ratios ours/library: attach at {n} {ours[2] / lib[2]:.3f}, detach {ours[3] / lib[3]:.3f}, "
        f"memory {ours[6] / lib[6]:.2f}, game_event {ours[4] / lib[4]:.2f}"
    )


if __name__ == "__main__":
    main()
