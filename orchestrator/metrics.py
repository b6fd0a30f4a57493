"""A tiny in-process metrics registry rendered as Prometheus text.

Counters and histograms with labels, plus gauges computed when scraped. The
engine observes step and action latencies here; the HTTP server adds request
latencies and scrape-time gauges (actors awake, queue depths). Other parts of the
host (the vm actor, sandboxes) register their own with :data:`REGISTRY`.
"""

from __future__ import annotations

import bisect
import math
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

Labels = tuple[tuple[str, str], ...]

# Seconds: 100 µs .. 5 min, roughly x2.5 apart.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        k = _key(labels)
        self._values[k] = self._values.get(k, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(_key(labels), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, v in sorted(self._values.items()):
            yield f"{self.name}{_fmt_labels(labels)} {_fmt_value(v)}"


class _Series:
    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)  # the last one is +Inf
        self.sum = 0.0


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.name = name
        self.help = help
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, _Series] = {}
        # The labels exactly as a call site passes them (same order every time) →
        # their series: one dict lookup per observation instead of sorting the
        # labels (every durable step and HTTP request observes one). As many
        # entries as series, times the orders the call sites use.
        self._fast: dict[tuple[tuple[str, str], ...], _Series] = {}

    def observe(self, value: float, **labels: str) -> None:
        raw = tuple(labels.items())
        s = self._fast.get(raw)
        if s is None:
            k = _key(labels)
            s = self._series.get(k)
            if s is None:
                s = self._series[k] = _Series(len(self.buckets))
            self._fast[raw] = s
        s.counts[bisect.bisect_left(self.buckets, value)] += 1
        s.sum += value

    def count(self, **labels: str) -> int:
        s = self._series.get(_key(labels))
        return sum(s.counts) if s is not None else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, s in sorted(self._series.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), s.counts, strict=True):
                running += n
                le = (("le", _fmt_value(bound)),)
                yield f"{self.name}_bucket{_fmt_labels(labels, le)} {running}"
            yield f"{self.name}_sum{_fmt_labels(labels)} {_fmt_value(s.sum)}"
            yield f"{self.name}_count{_fmt_labels(labels)} {running}"


GaugeFn = Callable[[], Iterable[tuple[dict[str, str], float]]]


class Gauge:
    """A gauge whose samples are computed when scraped: ``fn() -> [(labels, value)]``."""

    def __init__(self, name: str, help: str, fn: GaugeFn) -> None:
        self.name = name
        self.help = help
        self.fn = fn

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, v in self.fn():
            yield f"{self.name}{_fmt_labels(_key(labels))} {_fmt_value(float(v))}"


Metric = Counter | Histogram | Gauge


class MetricsRegistry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: Metric) -> Metric:
        with self._lock:
            existing = self._metrics.get(metric.name)
            if existing is not None:
                if type(existing) is not type(metric):
                    raise ValueError(f"metric {metric.name!r} is already a {type(existing)}")
                if isinstance(metric, Gauge):  # re-registering replaces the callback
                    self._metrics[metric.name] = metric
                    return metric
                return existing
            self._metrics[metric.name] = metric
            return metric

    def counter(self, name: str, help: str) -> Counter:
        m = self._add(Counter(name, help))
        assert isinstance(m, Counter)
        return m

    def histogram(
        self, name: str, help: str, buckets: tuple[float, ...] = DEFAULT_BUCKETS
    ) -> Histogram:
        m = self._add(Histogram(name, help, buckets))
        assert isinstance(m, Histogram)
        return m

    def gauge(self, name: str, help: str, fn: GaugeFn) -> Gauge:
        m = self._add(Gauge(name, help, fn))
        assert isinstance(m, Gauge)
        return m

    def unregister(self, name: str) -> None:
        with self._lock:
            self._metrics.pop(name, None)

    def render(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for m in metrics:
            try:
                lines.extend(m.render())
            except Exception as exc:  # a broken gauge callback must not break the scrape
                lines.append(f"# {m.name} unavailable: {type(exc).__name__}")
        return "\n".join(lines) + "\n"


REGISTRY = MetricsRegistry()

STEP_SECONDS = REGISTRY.histogram(
    "agentvm_step_seconds", "Duration of workflow step attempts, by actor type and outcome."
)
ACTION_SECONDS = REGISTRY.histogram(
    "agentvm_action_seconds",
    "Duration of actor action calls, by actor type and action "
    '(the vm\'s exec latency is action="exec").',
)
RUNS_TOTAL = REGISTRY.counter(
    "agentvm_runs_total",
    "Run transitions, by actor type and the status entered (running, completed, failed, "
    "cancelled).",
)


def register_runs_gauge(engine: Any) -> None:
    """``agentvm_runs{actor,status}``: queued and running runs of the awake actors of
    ``engine`` (the latest engine started in this process; held weakly)."""
    ref = weakref.ref(engine)

    def sample() -> Iterable[tuple[dict[str, str], float]]:
        eng = ref()
        if eng is None:
            return []
        counts: dict[tuple[str, str], int] = {}
        for inst in list(eng.instances.values()):
            for st in list(inst.runs.runs.values()):
                k = (inst.name, st.record.status)
                counts[k] = counts.get(k, 0) + 1
        return [({"actor": a, "status": s}, n) for (a, s), n in sorted(counts.items())]

    REGISTRY.gauge("agentvm_runs", "Queued and running runs of awake actors.", sample)
