"""Time as the session sees it: an injected clock (Tornado's IOLoop in the server, a hand clock in tests)."""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("preflight")


class Clock(Protocol):
    """What timers need; Tornado's IOLoop is one."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...

    def remove_timeout(self, timeout: object) -> None: ...

    def time(self) -> float: ...


class Owner(Protocol):
    """What a timer is for: a session or a match, told the name of each of its timers that comes due."""

    def expired(self, timer: str) -> object: ...


class _Expiry:
    """What the clock calls when a named timer is due: one small object, no bound method, closure or arguments of
    its own (an idle participant waits on two timers; each of those costs 120 bytes more)."""

    __slots__ = ("name", "owner", "timers")

    def __init__(self, timers: Timers, name: str, owner: Owner) -> None:
        self.timers, self.name, self.owner = timers, name, owner

    def __call__(self) -> None:
        self.timers.handles.pop(self.name, None)
        self.owner.expired(self.name)


class Timers:
    """Named one-shot timers on a clock; starting a name again replaces its timer."""

    __slots__ = ("clock", "handles")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.handles: dict[str, object] = {}

    def start(self, name: str, delay: float, owner: Owner) -> None:
        """Call `owner.expired(name)` after `delay` seconds, unless cancelled or started again first.

        The owner comes with each start rather than once: held here for good, it would tie the owner into a cycle
        that only the collector could free."""
        self.cancel(name)
        self.handles[name] = self.clock.call_later(delay, _Expiry(self, name, owner))

    def cancel(self, name: str) -> None:
        handle = self.handles.pop(name, None)
        if handle is not None:
            self.clock.remove_timeout(handle)

    def cancel_all(self) -> None:
        for name in list(self.handles):
            self.cancel(name)

    def running(self, name: str) -> bool:
        return name in self.handles


class SharedClock:
    """A `Clock` for many sessions' timers on one timer of the loop's: each timer is a small heap entry, not a loop
    handle with its own callback wrapper and context (the server's idle participants each wait on two).

    Timers fire in the order they are due (those due at once, in the order they were started); a cancelled
    one is dropped when it comes up, or all at once when they are more than a quarter of the heap (every
    connection's hello timer is cancelled within milliseconds but would otherwise sit there for its 30 s).
    """

    __slots__ = ("_at", "_cancelled", "_handle", "_heap", "_seq", "loop")

    def __init__(self, loop: Clock) -> None:
        self.loop = loop
        self._heap: list[list[Any]] = []  # [when, sequence, callback or None once cancelled or run]
        self._seq = 0
        self._cancelled = 0
        self._handle: object | None = None
        self._at = math.inf  # when the loop's timer is set for

    def time(self) -> float:
        return self.loop.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        when = self.loop.time() + max(0.0, delay)
        self._seq += 1
        entry = [when, self._seq, callback]
        heapq.heappush(self._heap, entry)
        if when < self._at:
            self._arm(when)
        return entry

    def remove_timeout(self, timeout: object) -> None:
        entry: list[Any] = timeout  # type: ignore[assignment]
        if entry[2] is None:
            return
        entry[2] = None
        self._cancelled += 1
        if self._cancelled > 64 and 4 * self._cancelled > len(self._heap):
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    @property
    def pending(self) -> int:
        """Timers started and neither run nor cancelled."""
        return len(self._heap) - self._cancelled

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self.loop.remove_timeout(self._handle)
        self._at = when
        self._handle = self.loop.call_later(max(0.0, when - self.loop.time()), self._run)

    def _run(self) -> None:
        self._handle, self._at = None, math.inf
        heap = self._heap
        now = self.loop.time()
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            callback, entry[2] = entry[2], None
            if callback is None:
                self._cancelled -= 1
                continue
            try:
                callback()
            except Exception:  # as the loop itself would: one failing timer stops no other
                log.exception("timer callback %r failed", callback)
            heap = self._heap  # a cancel may have compacted it
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap and heap[0][0] < self._at:
            self._arm(heap[0][0])
