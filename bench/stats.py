"""Pure statistics and result types of the benchmark suite (no I/O, unit-tested).

- percentiles of raw samples (client-side latencies, Redis propagation);
- Prometheus text parsing and quantiles from histogram bucket *deltas* (a scrape before
  and after the measured window, so that warm-up and earlier benchmarks do not count),
  with Prometheus' own `histogram_quantile` rule: linear interpolation inside a bucket;
- `Goal` and `Row`: one line of the result table, with its pass/fail verdict.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# -- raw samples --------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of `samples`, linearly interpolated (numpy's default)."""
    if not samples:
        return math.nan
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0..1, got {q}")
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p90, p99 and max of `samples` (NaN for an empty list)."""
    if not samples:
        return {"count": 0, "mean": math.nan, "p50": math.nan, "p90": math.nan,
                "p99": math.nan, "max": math.nan}  # fmt: skip
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
    }


def ecdf(samples: Sequence[float], points_max: int = 2000) -> tuple[list[float], list[float]]:
    """Empirical CDF as (x, fraction <= x), thinned to at most `points_max` points."""
    ordered = sorted(samples)
    if not ordered:
        return [], []
    step = max(1, len(ordered) // points_max)
    xs = ordered[::step]
    fractions = [(index * step + 1) / len(ordered) for index in range(len(xs))]
    if xs[-1] != ordered[-1]:
        xs.append(ordered[-1])
        fractions.append(1.0)
    return xs, fractions


def least_squares_slope(points: Sequence[tuple[float, float]]) -> float:
    """The slope of y over x fitted by least squares (NaN with under two distinct x).

    A fit over a whole window, not two end points: on a busy machine a single sample
    can be late by a few hundred ms either way.
    """
    if len(points) < 2:
        return math.nan
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return math.nan
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0 or math.isnan(baseline):
        return None
    return value / baseline


# -- Prometheus text format ---------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class MetricSample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_prometheus(text: str, names: Iterable[str] | None = None) -> list[MetricSample]:
    """Samples of a /metrics page; only metrics whose name starts with one of `names`."""
    prefixes = tuple(names) if names is not None else ("",)
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#") or not line.startswith(prefixes):
            continue
        match = _SAMPLE_RE.match(line)
        if match is None:
            continue
        name, raw_labels, raw_value = match.groups()
        labels = dict(_LABEL_RE.findall(raw_labels or ""))
        samples.append(MetricSample(name, labels, float(raw_value)))
    return samples


def metric_value(samples: Iterable[MetricSample], name: str) -> float | None:
    """The value of the first sample called `name` (gauges and counters of one node)."""
    for sample in samples:
        if sample.name == name:
            return sample.value
    return None


Buckets = list[tuple[float, float]]  # (upper bound `le`, cumulative count), +Inf last


def histogram_buckets(samples: Iterable[MetricSample], name: str) -> Buckets:
    """The cumulative buckets of histogram `name` (one node's), sorted by bound."""
    buckets = [
        (float(sample.labels["le"]), sample.value)
        for sample in samples
        if sample.name == f"{name}_bucket" and "le" in sample.labels
    ]
    return sorted(buckets)


def bucket_delta(after: Buckets, before: Buckets) -> Buckets:
    """Observations made between two scrapes of one histogram (bucket bounds must match)."""
    if not before:
        return list(after)
    previous = dict(before)
    return [(bound, count - previous.get(bound, 0.0)) for bound, count in after]


def merge_buckets(histograms: Iterable[Buckets]) -> Buckets:
    """Sum histograms of several nodes (same bounds) into one."""
    totals: dict[float, float] = {}
    for buckets in histograms:
        for bound, count in buckets:
            totals[bound] = totals.get(bound, 0.0) + count
    return sorted(totals.items())


def histogram_count(buckets: Buckets) -> float:
    return buckets[-1][1] if buckets else 0.0


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding q.

    The first bucket is taken to start at 0. A quantile in the +Inf bucket answers the
    highest finite bound (the histogram cannot say more). NaN when empty.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0..1, got {q}")
    total = histogram_count(buckets)
    if total <= 0:
        return math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > lower_count:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def histogram_cdf(buckets: Buckets) -> tuple[list[float], list[float]]:
    """(finite upper bounds, fraction of observations <= each) for plotting a CDF."""
    total = histogram_count(buckets)
    if total <= 0:
        return [], []
    finite = [(bound, count) for bound, count in buckets if not math.isinf(bound)]
    return [bound for bound, _ in finite], [count / total for _, count in finite]


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """`measured <op> threshold`, on the row's value or on its ratio to the baseline.

    `op="±"` (with `on="baseline"`) asks the value to lie within `threshold` of the
    row's baseline, in the row's unit: a measured RTT against the topology's target.
    """

    op: str  # ">=" or "<=" (or "<"), or "±"
    threshold: float
    on: str = "value"  # "value" | "ratio" | "baseline"

    def met(
        self, value: float | None, ratio_value: float | None, baseline: float | None = None
    ) -> bool | None:
        if self.op == "±":
            if value is None or baseline is None or math.isnan(value) or math.isnan(baseline):
                return None
            return abs(value - baseline) <= self.threshold
        subject = ratio_value if self.on == "ratio" else value
        if subject is None or math.isnan(subject):
            return None
        if self.op == ">=":
            return subject >= self.threshold
        if self.op == "<=":
            return subject <= self.threshold
        if self.op == "<":
            return subject < self.threshold
        raise ValueError(f"unknown goal operator {self.op!r}")

    def describe(self, unit: str) -> str:
        if self.op == "±":
            return f"± {format_value(self.threshold, unit)} of baseline"
        if self.on == "ratio":
            return f"ratio {self.op} {self.threshold:g}x"
        return f"{self.op} {format_value(self.threshold, unit)}"


@dataclass
class Row:
    """One line of the result table."""

    benchmark: str
    metric: str
    unit: str
    value: float | None = None
    # What the value is compared with (the echo server, Redis), when there is one.
    baseline: float | None = None
    baseline_name: str = ""
    goal: Goal | None = None
    # "pass" | "fail" | "info" | "skipped" | "error"; filled by `judge` unless set.
    status: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.baseline)

    def judge(self) -> Row:
        if self.status:
            return self
        if self.value is None or math.isnan(self.value):
            self.status = "error"
        elif self.goal is None:
            self.status = "info"
        else:
            verdict = self.goal.met(self.value, self.ratio, self.baseline)
            self.status = "info" if verdict is None else ("pass" if verdict else "fail")
        return self

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["goal"] = None if self.goal is None else {**asdict(self.goal), "text": self.goal_text}
        safe: dict[str, Any] = json_safe(data)
        return safe

    @property
    def goal_text(self) -> str:
        return "" if self.goal is None else self.goal.describe(self.unit)


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: NaN becomes None, infinity Prometheus' "+Inf"."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def format_value(value: float | None, unit: str) -> str:
    """A number for the table: thousands separators for rates, 3 significant digits else."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The result table as GitHub markdown (the same columns as the terminal table)."""
    lines = [
        "| benchmark | metric | edgepop | baseline | ratio | goal | result |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        baseline = format_value(row.baseline, row.unit)
        if row.baseline_name and row.baseline is not None:
            baseline = f"{baseline} ({row.baseline_name})"
        elif row.baseline_name:
            baseline = f"- ({row.baseline_name})"
        result = row.status.upper() if row.status in ("pass", "fail") else row.status
        if row.note:
            result = f"{result}: {row.note}"
        lines.append(
            f"| {row.benchmark} | {row.metric} | {format_value(row.value, row.unit)} | "
            f"{baseline} | {format_value(row.ratio, 'x')} | {row.goal_text} | {result} |"
        )
    return "\n".join(lines)
