"""Replay statistics: percentiles, the per-session outcome counts, thresholds for CI. Pure functions."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "diverged", "failed", "unfinished")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return math.nan
    return values[max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))]


def summary(seconds: Iterable[float]) -> dict[str, float | int | None]:
    """count, p50/p95/p99/max and mean, in milliseconds."""
    values = sorted(seconds)
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ms = [v * 1000.0 for v in values]
    return {
        "count": len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": ms[-1],
        "mean": sum(ms) / len(ms),
    }


@dataclass
class Collector:
    """Everything a run's sessions produced, merged; `report` is the JSON the CLI writes."""

    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    divergences: dict[str, int] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    lag: list[float] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, session: Any) -> None:
        """Merge one finished ReplaySession."""
        self.statuses[session.status] = self.statuses.get(session.status, 0) + 1
        if session.divergence:
            self.divergences[session.divergence] = self.divergences.get(session.divergence, 0) + 1
            self.examples.setdefault(session.divergence, session.detail)
        for label, seconds in session.latencies:
            self.latency.setdefault(label, []).append(seconds)
        self.lag.extend(session.lags)
        if session.time_to_ready is not None:
            self.ready.append(session.time_to_ready)
        self.sent += session.sent_count
        self.received += session.received_count

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    def report(self, duration: float, **context: Any) -> dict[str, Any]:
        every = [v for label, values in self.latency.items() if label != "connect" for v in values]
        return {
            **context,
            "duration_s": duration,
            "sessions": {**self.statuses, "total": self.done},
            "divergences": dict(sorted(self.divergences.items())),
            "divergence_examples": self.examples,
            "messages": {
                "sent": self.sent,
                "received": self.received,
                "sent_per_s": self.sent / duration if duration > 0 else None,
                "received_per_s": self.received / duration if duration > 0 else None,
            },
            "latency_ms": {"all": summary(every), **{k: summary(v) for k, v in sorted(self.latency.items())}},
            "scheduling_lag_ms": summary(self.lag),
            "time_to_ready_ms": summary(self.ready),
        }


def locust_events(session: Any) -> list[dict[str, Any]]:
    """One finished session as Locust `request` events: each timed reply, then the session's outcome."""
    events = [
        {
            "request_type": "WS",
            "name": label,
            "response_time": seconds * 1000.0,
            "response_length": 0,
            "exception": None,
        }
        for label, seconds in session.latencies
    ]
    failed = session.status != "ok"
    events.append(
        {
            "request_type": "session",
            "name": session.divergence or session.status,
            "response_time": (session.time_to_ready or 0.0) * 1000.0,
            "response_length": session.sent_count,
            "exception": ReplayDivergence(session.detail or session.status) if failed else None,
        }
    )
    return events


class ReplayDivergence(Exception):
    """A replayed session that did not do what its recording did (Locust counts it as a failure)."""


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report as flat rows (one per measured series), for CSV and the terminal table."""
    out = []
    for section, series in (
        ("latency_ms", report["latency_ms"]),
        ("scheduling_lag_ms", {"all": report["scheduling_lag_ms"]}),
        ("time_to_ready_ms", {"all": report["time_to_ready_ms"]}),
    ):
        for name, s in series.items():
            out.append({"series": section, "name": name, **s})
    return out


@dataclass(frozen=True)
class Threshold:
    metric: str
    op: str
    value: float
    text: str


_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_THRESHOLD = re.compile(r"\s*([a-z_0-9]+)\s*(>=|<=|>|<)\s*([0-9.]+)\s*(ms|s)?\s*")
LATENCY_METRICS = ("p50", "p95", "p99", "max", "mean")
COUNT_METRICS = ("errors", "diverged", "failed", "unfinished")
METRICS = LATENCY_METRICS + tuple("lag_" + m for m in LATENCY_METRICS) + COUNT_METRICS


def parse_thresholds(text: str) -> list[Threshold]:
    """`p99>200ms,errors>0` → thresholds; ValueError names the part it cannot read."""
    found = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _THRESHOLD.fullmatch(part)
        if not match or match.group(1) not in METRICS:
            raise ValueError(
                f"cannot read threshold {part!r}: use METRIC OP VALUE with METRIC one of "
                f"{', '.join(METRICS)} (e.g. p99>200ms,errors>0)"
            )
        metric, op, number, unit = match.groups()
        if metric in COUNT_METRICS and unit:
            raise ValueError(f"threshold {part!r}: {metric} is a count, not a time")
        value = float(number) * (1000.0 if unit == "s" else 1.0)
        found.append(Threshold(metric, op, value, part))
    return found


def measure(report: dict[str, Any], metric: str) -> float:
    if metric in COUNT_METRICS:
        sessions = report["sessions"]
        if metric == "errors":
            return float(
                sessions["diverged"] + sessions["failed"] + sessions["unfinished"] + sessions.get("not_started", 0)
            )
        return float(sessions[metric])
    series = report["scheduling_lag_ms"] if metric.startswith("lag_") else report["latency_ms"]["all"]
    value = series[metric.removeprefix("lag_")]
    return math.nan if value is None else float(value)


def breaches(report: dict[str, Any], thresholds: list[Threshold]) -> list[str]:
    """The thresholds this report crosses, each with the measured value."""
    out = []
    for t in thresholds:
        value = measure(report, t.metric)
        if not math.isnan(value) and _OPS[t.op](value, t.value):
            out.append(f"{t.text} (measured {value:g})")
    return out
