"""Time as the session sees it: an injected clock (Tornado's IOLoop in the server, a hand clock in tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """What timers need; Tornado's IOLoop is one."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...

    def remove_timeout(self, timeout: object) -> None: ...

    def time(self) -> float: ...


class Timers:
    """Named one-shot timers on a clock; starting a name again replaces its timer."""

    __slots__ = ("clock", "handles")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.handles: dict[str, object] = {}

    def start(self, name: str, delay: float, callback: Callable[[], object]) -> None:
        self.cancel(name)

        def expire() -> None:
            self.handles.pop(name, None)
            callback()

        self.handles[name] = self.clock.call_later(delay, expire)

    def cancel(self, name: str) -> None:
        handle = self.handles.pop(name, None)
        if handle is not None:
            self.clock.remove_timeout(handle)

    def cancel_all(self) -> None:
        for name in list(self.handles):
            self.cancel(name)

    def running(self, name: str) -> bool:
        return name in self.handles
