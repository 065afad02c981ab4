"""Research data from the page arrives once: numbered by the page, deduplicated here, gaps recorded, receipt told back.

The page numbers each research message (`n`: 1, 2, ...) and keeps it until the server's `received` covers it,
resending what is uncovered after every reconnect. The session keeps the highest `n` stored; a numbered message
saves no snapshot of its own (a batch of steps changes nothing else), so at a restart the session's own log is
read for it, and for the steps of the game in progress: the log always holds at least what the snapshot does.
"""

from __future__ import annotations

import os
from typing import Any

from .protocol import RESEARCH_TYPES
from .session import Session
from .store import read_records


def numbered(message: dict[str, Any]) -> bool:
    """Whether this message takes part in numbered delivery (older pages and tools send none)."""
    return "n" in message and message["type"] in RESEARCH_TYPES


def is_new(session: Session, message: dict[str, Any]) -> bool:
    """True for the next message (or one after a gap, which is recorded); False for a resent duplicate."""
    n: int = message["n"]
    if n <= session.received_n:
        return False
    if n > session.received_n + 1:
        session.record("gap", first=session.received_n + 1, last=n - 1, type=message["type"])
    session.received_n = n
    return True


def logged(path: os.PathLike[str] | str) -> tuple[int, int]:
    """What a session's log says it had received before a kill: the highest research `n` among its frames, and
    the steps recorded since its last scene began (the game in progress)."""
    highest = steps = 0
    try:
        for record in read_records(path):
            kind = record.get("kind") if isinstance(record, dict) else None
            if kind == "scene":
                steps = 0
            elif kind == "steps" and isinstance(record.get("steps"), list):
                steps += len(record["steps"])
            message = record.get("message") if kind == "frame" and record.get("dir") == "in" else None
            if isinstance(message, dict) and message.get("type") in RESEARCH_TYPES:
                n = message.get("n")
                if isinstance(n, int) and not isinstance(n, bool) and n > highest:
                    highest = n
    except OSError:
        pass
    return highest, steps
