"""The `/ws` wire format: message schema, encode/decode and error codes, as pure functions.

Every frame is one binary msgpack map with a string `type`. Nothing here touches a
socket or a session, so the server, the protocol client and the load tester share it.
"""

from __future__ import annotations

import enum
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import msgpack


class Code(enum.StrEnum):
    """Why a message was refused; the socket stays open and the session's state is unchanged."""

    BAD_MESSAGE = "bad_message"  # not msgpack, not a map, no `type`, or a field of the wrong type
    UNKNOWN_TYPE = "unknown_type"  # a `type` this protocol does not define
    GATED = "gated"  # the lifecycle allows it, but not yet: the preflight (screening, Python preload) is unsettled
    NOT_ALLOWED = "not_allowed"  # the current state does not accept this message at all
    BAD_TOKEN = "bad_token"  # a resume token that matches no session (unknown, or the session has ended)
    TOO_LARGE = "too_large"  # a frame above the configured maximum (far above it, the connection is closed)
    RATE_LIMITED = "rate_limited"  # more messages per second than the configured limit
    SERVER_FULL = "server_full"  # the server holds as many sessions as it is configured to; try again later
    QUOTA_EXCEEDED = "quota_exceeded"  # this session sent more research data than its configured quota
    ALREADY_PARTICIPATED = "already_participated"  # this id is in progress, or ended in a locking outcome
    STORAGE_UNAVAILABLE = "storage_unavailable"  # the server cannot write participant data now; try again later
    NOT_YOUR_AGENT = "not_your_agent"  # an `input` for an agent another participant (or a bot) plays
    FRAME_CLOSED = "frame_closed"  # an `input` for a frame the server has already closed
    FRAME_AHEAD = "frame_ahead"  # an `input` further ahead than the input delay allows


class Close(enum.IntEnum):
    """WebSocket close codes the server uses for abuse (RFC 6455 section 7.4.1)."""

    POLICY = 1008  # too many refused messages in a row, or a flood while `screening` waits for the round trip
    TOO_LARGE = 1009  # a frame far above the configured maximum (Tornado closes with this itself)
    TAKEN_OVER = 4001  # the same session was resumed from another connection (a second tab); the newest wins
    NO_HELLO = 4002  # no accepted `hello` within the configured time after connecting
    TOO_MANY = 4003  # this address already holds as many connections as one address may
    UNAVAILABLE = 1013  # "try again later": a new participant refused while participant data cannot be written


@dataclass(frozen=True)
class Refusal:
    """A refused message, as a value: the handler turns it into an `error` reply."""

    code: Code
    message: str


CLIENT_TYPES = (
    "hello",
    "ack",
    "screening",
    "preload",
    "advance",
    "game_event",
    "steps",
    "game_over",
    "match_ready",
    "input",
    "state_hash",
)
SERVER_TYPES = (
    "experiment_config",
    "activate_scene",
    "state",
    "error",
    "received",
    "match",
    "frame",
    "partner_status",
    "match_end",
)
PARTNER_STATUSES = ("reconnecting", "connected", "bot", "left")
"""What `partner_status` says of a partner in a match."""
RESEARCH_TYPES = ("preload", "game_event", "steps", "game_over")
"""Research data: the page numbers each with `n` (1, 2, ...) and keeps it until a `received` covers it."""
PRELOAD_STATUSES = ("loading", "ready", "error")
PRELOAD_STAGES: dict[str, tuple[float, str]] = {
    "runtime": (0.05, "Loading the Python runtime"),
    "micropip": (0.55, "Loading the package installer"),
    "packages": (0.65, "Installing packages"),
    "models": (0.85, "Loading the AI partners"),
    "preparing": (0.95, "Preparing the game"),
}
"""The stages a `loading` report names, in order: the share of the progress bar each starts at, and its label."""
GIVE_UP = (Close.POLICY, Close.TOO_LARGE, Close.TAKEN_OVER)
"""Closes after which reconnecting cannot help: the page stops trying."""

Writer = Callable[[dict[str, Any]], None]
"""Anything a message or a record is handed to: a connection, a session log, a list in a test."""

PARTICIPANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
MAX_TEXT = 2048
SIMULATED_HASH = "sim:"
"""How a `state_hash` from a client that does not run the game begins (the walk and replay clients hash the actions
they applied): players' hashes are still compared with each other, never with the export's replay of the game."""
MAX_PARAMS = 32
MAX_DEPTH = 8
MAX_ITEMS = 4096

Validator = Callable[[Any], "str | None"]


def _text(limit: int = MAX_TEXT) -> Validator:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        return None if len(value) <= limit else f"longer than {limit} characters"

    return check


def _pattern(regex: re.Pattern[str], what: str) -> Validator:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and regex.fullmatch(value):
            return None
        return f"must be {what}"

    return check


def _number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf
    return None if ok else "must be a non-negative finite number"


def _count(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31
    return None if ok else "must be a non-negative integer"


def _serial(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**53
    return None if ok else "must be a positive integer"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _one_of(*choices: str) -> Validator:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(choices)

    return check


def _params(value: Any) -> str | None:
    if not isinstance(value, dict) or len(value) > MAX_PARAMS:
        return f"must be a map of at most {MAX_PARAMS} strings"
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > 64 or not isinstance(item, str) or len(item) > 256:
            return "must map short string names to strings of at most 256 characters"
    if "PROLIFIC_PID" in value and not PARTICIPANT_ID.fullmatch(value["PROLIFIC_PID"]):
        return "PROLIFIC_PID must be 1-64 letters, digits, '-' or '_'"
    return None


FACTS: dict[str, Validator] = {
    "user_agent": _text(512),
    "screen_width": _count,
    "screen_height": _count,
    "device_pixel_ratio": _number,
    "webassembly": _flag,
    "touch": _flag,
    "max_touch_points": _count,
    "hardware_concurrency": _count,
    "language": _text(64),
    "platform": _text(64),
}
"""Facts the page measures; other keys are kept as data if they are plain scalars."""


def _facts(value: Any) -> str | None:
    if not isinstance(value, dict) or len(value) > 64:
        return "must be a map of at most 64 facts"
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > 64:
            return "must have short string names"
        check = FACTS.get(key)
        if check is not None:
            problem = check(item)
            if problem:
                return f"{key} {problem}"
        elif not (item is None or isinstance(item, (bool, int, float)) or (isinstance(item, str) and len(item) <= 512)):
            return f"{key} must be a plain value"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{key} must be a finite number, not {item}"
    return None


_SCALAR_TYPES = frozenset((str, int, bool, float, type(None)))
_NUMBER_TYPES = frozenset((int, bool, float))
_STR_TYPE = frozenset((str,))


def _string_keys(item: dict[Any, Any]) -> bool:
    return _STR_TYPE.issuperset(map(type, item)) or all(isinstance(k, str) for k in item)


def _finite(children: Any, kinds: set[type]) -> bool:
    """Every float among `children` is finite (`kinds`: their types, all scalar)."""
    if float not in kinds:
        return True
    if kinds <= _NUMBER_TYPES:
        try:  # a NaN or an infinity makes the sum one too; finite numbers whose sum overflows are looked at one by one
            if math.isfinite(sum(children)):
                return True
        except OverflowError:  # an int beyond a float's range: look at the floats alone
            pass
    return all(math.isfinite(child) for child in children if type(child) is float)


def _plain(value: Any) -> str | None:
    """Research data may be any JSON-like value, but not a bomb: bounded depth and size, no msgpack extensions.

    Scalars inside a map or list are checked where they are found, not pushed: a batch of steps is mostly scalars.
    A map or list holding only plain scalars (a step) is checked by its children's types at once, in C.
    """
    stack, items = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        items += 1
        if items > MAX_ITEMS:
            return f"holds more than {MAX_ITEMS} values"
        if isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                return f"is nested deeper than {MAX_DEPTH} levels"
            if isinstance(item, dict):
                if not _string_keys(item):
                    return "must have string keys"
                children: Any = item.values()
            else:
                children = item
            kinds = set(map(type, children))
            if kinds <= _SCALAR_TYPES and _finite(children, kinds):
                items += len(children)
            else:
                for child in children:
                    kind = type(child)
                    scalar = kind is str or kind is int or kind is bool or child is None
                    if scalar or (kind is float and math.isfinite(child)):
                        items += 1
                    else:
                        stack.append((child, depth + 1))
            if items > MAX_ITEMS:
                return f"holds more than {MAX_ITEMS} values"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"holds {item}: numbers must be finite (exports cannot hold NaN or Infinity)"
        elif not (item is None or isinstance(item, (bool, int, float, str))):
            return f"must be plain data, not {type(item).__name__}"
    return None


MAX_STEPS = 256


_DICT_TYPE = frozenset((dict,))
_INT_TYPE = frozenset((int,))
_CONTAINER_TYPES = frozenset((dict, list))
_EPISODE = operator.itemgetter("episode")
_STEP = operator.itemgetter("step")


def _flat_steps(steps: list[Any]) -> bool:
    """True when a batch is certainly valid, checked a whole batch at a time in C: maps of plain scalars, or of
    maps and lists of plain scalars (an `info`, the keys held), numbered by episode and step. False says nothing:
    `_steps` then checks each step as before, so every refusal reads the same."""
    if not _DICT_TYPE.issuperset(map(type, steps)):
        return False
    try:
        numbers = [*map(_EPISODE, steps), *map(_STEP, steps)]
    except KeyError:
        return False
    if not _INT_TYPE.issuperset(map(type, numbers)) or min(numbers) < 0 or max(numbers) >= 2**31:
        return False
    if not _STR_TYPE.issuperset(map(type, set().union(*steps))):  # the steps' names, each once
        return False
    values = list(chain.from_iterable(map(dict.values, steps)))
    kinds = set(map(type, values))
    items = 1 + len(steps) + len(values)
    if not kinds <= _SCALAR_TYPES:
        if not kinds <= _SCALAR_TYPES | _CONTAINER_TYPES:
            return False
        nested = [value for value in values if type(value) is dict or type(value) is list]
        values = [value for value in values if type(value) is not dict and type(value) is not list]
        kinds -= _CONTAINER_TYPES
        for container in nested:  # one level down, at depth 2 of MAX_DEPTH: plain scalars only
            if type(container) is dict and not _STR_TYPE.issuperset(map(type, container)):
                return False
            inner = container.values() if type(container) is dict else container
            inner_kinds = set(map(type, inner))
            if not inner_kinds <= _SCALAR_TYPES or not _finite(inner, inner_kinds):
                return False
            items += len(inner)
    return items <= MAX_ITEMS and _finite(values, kinds)


def _steps(value: Any) -> str | None:
    """A batch of a game's steps: each a map of plain data numbered by episode and step."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_STEPS:
        return f"must be a list of 1 to {MAX_STEPS} steps"
    return None if _flat_steps(value) else _each_step(value)


def _each_step(value: list[Any]) -> str | None:
    """A batch checked step by step, and its values by `_plain`: what says exactly what is wrong."""
    for item in value:
        if not isinstance(item, dict):
            return "must hold maps"
        for name in ("episode", "step"):
            if _count(item.get(name)) is not None:
                return f"{name} of every step must be a non-negative integer"
    return _plain(value)


MATCH_ID = re.compile(r"[0-9a-f]{16}")


def _frame(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31
    return None if ok else "must be a frame number (a positive integer)"


def _action(value: Any) -> str | None:
    """An action is a small plain value: the agent's own key map says which ones it may take."""
    if isinstance(value, (list, dict)) and len(value) > 64:
        return "must be a small plain value"
    return _plain(value)


@dataclass(frozen=True)
class Schema:
    fields: Mapping[str, Validator]
    required: tuple[str, ...] = ()
    open: bool = False  # research data: extra fields are kept as sent, if they are plain data


SCHEMAS: dict[str, Schema] = {
    "hello": Schema(
        {
            "participant_id": _pattern(PARTICIPANT_ID, "1-64 letters, digits, '-' or '_'"),
            "resume_token": _pattern(TOKEN, "a session token"),
            "last_seq": _count,
            "params": _params,
        }
    ),
    "ack": Schema({"seq": _count}, required=("seq",)),
    "screening": Schema({"facts": _facts}, required=("facts",)),
    "preload": Schema(
        {
            "status": _one_of(*PRELOAD_STATUSES),
            "stage": _text(64),
            "elapsed_ms": _number,
            "error": _text(),
            "package": _text(128),
            "done": _count,
            "total": _count,
            "n": _serial,
            "snapshot": _text(256),  # with --memory-snapshot: "restored", or why it was "not used: ..."
        },
        required=("status",),
    ),
    "advance": Schema({}),
    "game_event": Schema({"n": _serial}, open=True),
    "steps": Schema({"steps": _steps, "n": _serial}, required=("steps",)),
    "game_over": Schema({"n": _serial}, open=True),
    "match_ready": Schema({"match_id": _pattern(MATCH_ID, "a match id")}, required=("match_id",)),
    "input": Schema(
        {"f": _frame, "action": _action, "agent": _text(64), "match_id": _pattern(MATCH_ID, "a match id")},
        required=("f", "action"),
    ),
    "state_hash": Schema(
        {"f": _frame, "hash": _text(128), "match_id": _pattern(MATCH_ID, "a match id")}, required=("f", "hash")
    ),
}


def decode(frame: bytes | str) -> dict[str, Any] | Refusal:
    """Parse and validate one client frame; a Refusal says exactly what is wrong."""
    if isinstance(frame, str):
        return Refusal(Code.BAD_MESSAGE, "frames must be binary msgpack, not text")
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for broken input
        return Refusal(Code.BAD_MESSAGE, f"not a msgpack message ({type(exc).__name__})")
    if not isinstance(message, dict) or not _string_keys(message):
        return Refusal(Code.BAD_MESSAGE, "a message must be a map with string keys")
    kind = message.get("type")
    if not isinstance(kind, str):
        return Refusal(Code.BAD_MESSAGE, "a message needs a string 'type'")
    schema = SCHEMAS.get(kind)
    if schema is None:
        return Refusal(Code.UNKNOWN_TYPE, f"unknown message type {kind[:64]!r}")
    for name in schema.required:
        if name not in message:
            return Refusal(Code.BAD_MESSAGE, f"{kind}: missing field {name!r}")
    for name, value in message.items():
        if name == "type":
            continue
        check = schema.fields.get(name)
        if check is None:
            if not schema.open:
                return Refusal(Code.BAD_MESSAGE, f"{kind}: unexpected field {str(name)[:64]!r}")
            check = _plain
        problem = check(value)
        if problem:
            return Refusal(Code.BAD_MESSAGE, f"{kind}: {name} {problem}")
    return message


SECRETS = frozenset(("session_token", "resume_token"))


def redacted(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """The message as it may be stored: a token on disk would let anyone holding the data act as the participant."""
    if SECRETS.isdisjoint(message):
        return message
    return {k: ("<redacted>" if k in SECRETS else v) for k, v in message.items()}


_PACK = msgpack.Packer(use_bin_type=True).pack
"""One packer for every message: `packb` makes (and frees) a packer and its buffer for each."""


def encode(message: Mapping[str, Any]) -> bytes:
    return bytes(_PACK(message))


def error(refusal: Refusal, state: str) -> dict[str, Any]:
    return {"type": "error", "code": refusal.code.value, "message": refusal.message, "state": state}


def received(n: int) -> dict[str, Any]:
    """The highest `n` up to which every numbered research message is stored (or recorded as a gap)."""
    return {"type": "received", "n": n}


def state(name: str, may_advance: bool, **detail: Any) -> dict[str, Any]:
    return {"type": "state", "state": name, "may_advance": may_advance, **detail}


def experiment_config(
    *,
    experiment: str,
    session_token: str,
    participant_id: str,
    entry_screening: dict[str, Any],
    pyodide_config: dict[str, Any],
    scene_count: int,
) -> dict[str, Any]:
    return {
        "type": "experiment_config",
        "experiment": experiment,
        "session_token": session_token,
        "participant_id": participant_id,
        "entry_screening": entry_screening,
        "pyodide_config": pyodide_config,
        "scene_count": scene_count,
    }


def activate_scene(scene_id: str, scene_type: str, index: int, count: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "activate_scene",
        "scene_id": scene_id,
        "scene_type": scene_type,
        "index": index,
        "count": count,
        **payload,
    }


def match(
    *,
    match_id: str,
    scene_id: str,
    agent: str,
    agents: dict[str, Any],
    seeds: Sequence[int],
    input_delay: int,
    fps: int,
    hash_every: int,
    frames: list[dict[str, Any]],
) -> dict[str, Any]:
    """The page's part in a match: its agent, everyone's, the seeds, and every frame closed so far."""
    return {
        "type": "match",
        "match_id": match_id,
        "scene_id": scene_id,
        "agent": agent,
        "agents": agents,
        "seeds": seeds,
        "input_delay": input_delay,
        "fps": fps,
        "hash_every": hash_every,
        "frames": frames,
    }


def frame(f: int, actions: dict[str, Any], filled: list[str], bots: list[str]) -> dict[str, Any]:
    """Frame `f` as the server closed it: every human slot's action, which were filled, which slots bots play."""
    body: dict[str, Any] = {"type": "frame", "f": f, "actions": actions, "filled": filled}
    if bots:
        body["bots"] = bots
    return body


def partner_status(agent: str, status: str, deadline_s: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "partner_status", "agent": agent, "status": status}
    if deadline_s is not None:
        body["deadline_s"] = deadline_s
    return body


def match_end(match_id: str, outcome: str, frames: int) -> dict[str, Any]:
    return {"type": "match_end", "match_id": match_id, "outcome": outcome, "frames": frames}
