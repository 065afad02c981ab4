"""What the server sends one participant: numbered, held until acknowledged, resent when they come back."""

from __future__ import annotations

from typing import Any

from .protocol import Writer


class Outbox:
    """Numbers the messages that move a participant on and keeps them until acknowledged, for resending on resume.

    It also hands them to the connection, when there is one, and skips a `state` identical to the one last shown.
    """

    __slots__ = ("deliver", "seq", "shown", "unacked")
    LIMIT = 64

    def __init__(self, deliver: Writer | None = None) -> None:
        self.seq = 0
        # a list, not a deque(maxlen=...): a deque allocates a 64-slot block up front, ~0.6 KB per idle session
        self.unacked: list[dict[str, Any]] = []
        self.deliver = deliver
        self.shown: dict[str, Any] | None = None

    def post(self, message: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        numbered = {**message, "seq": self.seq}
        self.unacked.append(numbered)
        if len(self.unacked) > self.LIMIT:
            del self.unacked[0]
        if self.deliver is not None:
            self.deliver(numbered)
        return numbered

    def show(self, state: dict[str, Any]) -> None:
        """Post a `state` message to a connected participant unless it is exactly what they were last shown.

        What was shown is kept as it was posted (with its `seq`, the same map the outbox holds): no second copy."""
        if self.deliver is None:
            return
        shown = self.shown
        if shown is not None and len(shown) == len(state) + 1 and state.items() <= shown.items():
            return
        self.shown = self.post(state)

    def ack(self, seq: int) -> None:
        while self.unacked and self.unacked[0]["seq"] <= seq:
            del self.unacked[0]

    def since(self, seq: int) -> list[dict[str, Any]] | None:
        """What a client that has seen up to `seq` missed; None when some of it is no longer held."""
        if seq > self.seq:
            return None
        self.ack(seq)
        if seq < self.seq and (not self.unacked or self.unacked[0]["seq"] != seq + 1):
            return None
        return list(self.unacked)

    def connect(self, deliver: Writer, last_seq: int) -> bool:
        """A connection that has seen up to `last_seq`: resend what it missed; False when it needs everything again."""
        self.deliver = deliver
        self.shown = None
        missed = self.since(last_seq)
        if missed is None:
            self.ack(self.seq)
            return False
        for message in missed:
            deliver(message)
        return True

    def disconnect(self) -> None:
        self.deliver = None
