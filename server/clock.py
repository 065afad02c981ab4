"""Time as the session sees it: an injected clock (Tornado's IOLoop in the server, a hand clock in tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Clock(Protocol):
    """What timers need; Tornado's IOLoop is one."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> object: ...

    def remove_timeout(self, timeout: object) -> None: ...

    def time(self) -> float: ...


class _Expiry:
    """What the clock calls when a named timer is due: one small object, not a closure and its cells."""

    __slots__ = ("args", "callback", "name", "timers")

    def __init__(self, timers: Timers, name: str, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.timers, self.name, self.callback, self.args = timers, name, callback, args

    def __call__(self) -> None:
        self.timers.handles.pop(self.name, None)
        self.callback(*self.args)


class Timers:
    """Named one-shot timers on a clock; starting a name again replaces its timer."""

    __slots__ = ("clock", "handles")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.handles: dict[str, object] = {}

    def start(self, name: str, delay: float, callback: Callable[..., object], *args: Any) -> None:
        """Call `callback(*args)` after `delay` seconds, unless cancelled or started again first."""
        self.cancel(name)
        self.handles[name] = self.clock.call_later(delay, _Expiry(self, name, callback, args))

    def cancel(self, name: str) -> None:
        handle = self.handles.pop(name, None)
        if handle is not None:
            self.clock.remove_timeout(handle)

    def cancel_all(self) -> None:
        for name in list(self.handles):
            self.cancel(name)

    def running(self, name: str) -> bool:
        return name in self.handles
