"""PNG plots for the report (matplotlib, Agg backend: no display needed).

Each function takes plain numbers and a path, draws one figure and closes it, so a
failing plot never takes the measurement down with it (the caller logs and goes on).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import matplotlib

# Chosen before pyplot is imported; pyplot itself is imported on first use, so that
# processes that only import this module (the spawned load generators) stay light.
matplotlib.use("Agg")


P = ParamSpec("P")


def _guarded(draw: Callable[P, Path]) -> Callable[P, Path | None]:
    """A plot that fails is reported and skipped (None), never a lost measurement."""

    @functools.wraps(draw)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> Path | None:
        try:
            return draw(*args, **kwargs)
        except Exception as error:
            print(f"plot {draw.__name__} failed: {error!r}", file=sys.stderr)
            _plt().close("all")
            return None

    return guarded


def _plt() -> Any:
    import matplotlib.pyplot as plt

    return plt


EDGEPOP_COLOR = "#1f77b4"
BASELINE_COLOR = "#ff7f0e"
GOAL_COLOR = "#d62728"
REFERENCE_COLOR = "dimgray"
# How a figure that the run did not measure (one quoted from an issue) is labelled: a
# line beside the bars, never a bar of its own, so that it cannot pass for a measurement.
REFERENCE_SUFFIX = " (reference, not measured in this run)"


def _references(axes: Any, references: Mapping[str, float]) -> None:
    """Dotted lines with their values, labelled as figures from outside the run."""
    for name, value in references.items():
        label = f"{name}: {value:,.0f}{REFERENCE_SUFFIX}"
        axes.axhline(value, color=REFERENCE_COLOR, linestyle=":", label=label)
    if references:
        # Head room for the legend above the tallest bar.
        axes.set_ylim(top=axes.get_ylim()[1] * 1.3)


def _save(figure: Any, path: Path) -> Path:
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


@_guarded
def grouped_bars(
    path: Path,
    title: str,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    annotations: Sequence[str] = (),
    references: Mapping[str, float] = {},
) -> Path:
    """Side-by-side bars: one group per x label, one bar per series (e.g. PoP vs echo);
    `references` are figures not measured in the run (dotted lines, marked so)."""
    plt = _plt()
    figure, axes = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(series))
    colors = [BASELINE_COLOR, EDGEPOP_COLOR, "#2ca02c", "#9467bd"]
    for offset, (name, values) in enumerate(series.items()):
        positions = [
            index + (offset - (len(series) - 1) / 2) * width for index in range(len(groups))
        ]
        bars = axes.bar(positions, values, width, label=name, color=colors[offset % len(colors)])
        axes.bar_label(bars, labels=[f"{value:,.0f}" for value in values], fontsize=8)
    axes.set_xticks(range(len(groups)), groups)
    for index, text in enumerate(annotations):
        axes.annotate(
            text, (index, 0), xytext=(0, -28), textcoords="offset points", ha="center",
            fontsize=9, color="dimgray",
        )  # fmt: skip
    _references(axes, references)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


@_guarded
def bars_with_goal(
    path: Path,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    ylabel: str,
    goal: float | None = None,
    goal_label: str = "goal",
    references: Mapping[str, float] = {},
) -> Path:
    """One bar per label; `references` as in `grouped_bars`."""
    plt = _plt()
    width = max(7.0 if references else 5.0, 0.55 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(width, 4))
    bars = axes.bar(range(len(labels)), values, color=EDGEPOP_COLOR)
    axes.bar_label(bars, labels=[f"{value:,.3g}" for value in values], fontsize=8)
    axes.set_xticks(
        range(len(labels)),
        labels,
        rotation=30 if len(labels) > 4 else 0,
        ha="right" if len(labels) > 4 else "center",
    )
    if goal is not None:
        axes.axhline(goal, color=GOAL_COLOR, linestyle="--", label=goal_label)
    _references(axes, references)
    if goal is not None or references:
        axes.legend(fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


@_guarded
def latency_cdf(
    path: Path,
    title: str,
    step_cdfs: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    sample_cdfs: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    goals_ms: Mapping[str, float] = {},
    edgepop_samples: Sequence[str] = (),
) -> Path:
    """CDFs in milliseconds on a log axis: histogram buckets as steps, raw samples as lines
    (the baseline's colour, but edgepop's for the sample curves named in
    `edgepop_samples`)."""
    plt = _plt()
    figure, axes = plt.subplots(figsize=(7, 5))
    styles = ["-", ":", "-."]
    for index, (name, (xs, fractions)) in enumerate(step_cdfs.items()):
        # Buckets above the first one that holds everything add nothing but axis range.
        done = next((i for i, fraction in enumerate(fractions) if fraction >= 1.0), None)
        if done is not None:
            xs, fractions = xs[: done + 1], fractions[: done + 1]
        if xs:
            axes.step([x * 1e3 for x in xs], fractions, where="post", label=name,
                      color=EDGEPOP_COLOR, marker="o", markersize=3,
                      linestyle=styles[index % len(styles)])  # fmt: skip
    for name, (xs, fractions) in sample_cdfs.items():
        if xs:
            color = EDGEPOP_COLOR if name in edgepop_samples else BASELINE_COLOR
            axes.plot([x * 1e3 for x in xs], fractions, label=name, color=color, linewidth=2)
    for label, value in goals_ms.items():
        axes.axvline(value, color=GOAL_COLOR, linestyle="--", alpha=0.6)
        axes.annotate(label, (value, 0.02), rotation=90, fontsize=8, color=GOAL_COLOR,
                      xytext=(3, 0), textcoords="offset points")  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("propagation delay (ms, log scale)")
    axes.set_ylabel("fraction of writes")
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    # Below the axes: inside, it would hide a curve or a goal line.
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8)
    return _save(figure, path)


@_guarded
def timelines(
    path: Path,
    title: str,
    panels: Sequence[tuple[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]],
    xlabel: str = "seconds since the first write",
    hlines: Mapping[int, tuple[float, str]] = {},
) -> Path:
    """Stacked panels of lines over time: (y label, {series name: (t, y)})."""
    plt = _plt()
    figure, axes_list = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), sharex=True)
    if len(panels) == 1:
        axes_list = [axes_list]
    for index, (axes, (ylabel, series)) in enumerate(zip(axes_list, panels, strict=True)):
        for name, (ts, ys) in series.items():
            axes.plot(ts, ys, label=name, linewidth=1)
        if index in hlines:
            value, label = hlines[index]
            axes.axhline(value, color=GOAL_COLOR, linestyle="--", label=label)
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if len(series) <= 14:
            axes.legend(fontsize=7, ncol=4)
    axes_list[0].set_title(title)
    axes_list[-1].set_xlabel(xlabel)
    return _save(figure, path)


@_guarded
def measured_vs_target(
    path: Path,
    title: str,
    labels: Sequence[str],
    panels: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    ylabel: str = "round trip (ms)",
) -> Path:
    """One panel per (name, measured, target): bars side by side, the deviation on top."""
    plt = _plt()
    figure, axes_list = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False
    )
    width = 0.4
    for axes, (name, measured, target) in zip(axes_list[0], panels, strict=True):
        positions = list(range(len(labels)))
        axes.bar([p - width / 2 for p in positions], target, width, label="target",
                 color=BASELINE_COLOR)  # fmt: skip
        bars = axes.bar([p + width / 2 for p in positions], measured, width,
                        label="measured (median)", color=EDGEPOP_COLOR)  # fmt: skip
        axes.bar_label(
            bars,
            labels=[f"{m - t:+.1f}" for m, t in zip(measured, target, strict=True)],
            fontsize=7,
        )
        axes.set_xticks(positions, labels, rotation=30, ha="right")
        axes.set_title(name)
        axes.set_ylabel(ylabel)
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)


@_guarded
def measured_vs_requested(
    path: Path,
    title: str,
    requested: Sequence[float],
    series: Mapping[str, Sequence[float]],
    tolerance: Callable[[float], float] | None = None,
    unit: str = "ms",
) -> Path:
    """Left: measured against requested on log axes with the identity line. Right: the
    error (measured - requested) against requested, where a millisecond shows."""
    plt = _plt()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    lowest, highest = min(requested), max(requested)
    line = [lowest * 0.8, highest * 1.25]
    left.plot(line, line, color="gray", linestyle="--", linewidth=1, label="measured = requested")
    markers = ["o", "^", "s", "D"]
    colors = [EDGEPOP_COLOR, BASELINE_COLOR, "#2ca02c", "#9467bd"]
    for index, (name, values) in enumerate(series.items()):
        style = {"marker": markers[index % 4], "color": colors[index % 4], "label": name}
        left.scatter(requested, values, s=22, **style)
        right.scatter(
            requested, [v - r for v, r in zip(values, requested, strict=True)], s=22, **style
        )
    if tolerance is not None:
        xs = sorted({*requested, lowest * 0.8, highest * 1.25})
        band = [tolerance(x) for x in xs]
        right.fill_between(xs, [-b for b in band], band, color="gray", alpha=0.15,
                           label="tolerance max(1 ms, 5%)")  # fmt: skip
    right.axhline(0, color="gray", linewidth=1)
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_xlabel(f"requested RTT ({unit}, log scale)")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8)
    left.set_yscale("log")
    left.set_ylabel(f"measured RTT ({unit}, log scale)")
    right.set_ylabel(f"measured - requested ({unit})")
    figure.suptitle(title)
    return _save(figure, path)


@_guarded
def delay_sweep(
    path: Path,
    title: str,
    delays_ms: Sequence[float],
    throughput: Mapping[str, Sequence[float]],
    propagation_ms: Mapping[str, Sequence[float]],
) -> Path:
    """Replication against one-way delay: entries/s (top), propagation (bottom)."""
    plt = _plt()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7.5), sharex=True)
    for index, (name, values) in enumerate(throughput.items()):
        top.plot(delays_ms, values, marker="o", label=name,
                 color=[BASELINE_COLOR, EDGEPOP_COLOR][index % 2])  # fmt: skip
    top.set_ylim(bottom=0)
    top.set_ylabel("entries/s")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.plot(delays_ms, delays_ms, color="gray", linestyle="--", label="= one-way delay")
    for index, (name, values) in enumerate(propagation_ms.items()):
        bottom.plot(delays_ms, values, marker="o^"[index % 2], label=name,
                    color=[EDGEPOP_COLOR, GOAL_COLOR][index % 2])  # fmt: skip
    bottom.set_xlabel("one-way delay us-east-1 <-> PoP (ms)")
    bottom.set_ylabel("commit -> visible at the PoP (ms)")
    bottom.set_xticks(list(delays_ms))
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    return _save(figure, path)


@_guarded
def distribution(
    path: Path,
    title: str,
    samples: Sequence[float],
    xlabel: str,
    goal: float | None = None,
    goal_label: str = "goal",
) -> Path:
    """A histogram (left) and the empirical CDF (right) of one set of samples."""
    plt = _plt()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.hist(samples, bins=max(5, min(30, len(samples))), color=EDGEPOP_COLOR,
              edgecolor="white")  # fmt: skip
    left.set_xlabel(xlabel)
    left.set_ylabel("count")
    ordered = sorted(samples)
    fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]
    right.step(ordered, fractions, where="post", color=EDGEPOP_COLOR, marker="o", markersize=3)
    right.set_xlabel(xlabel)
    right.set_ylabel("fraction <= x")
    right.set_ylim(0, 1.02)
    for axes in (left, right):
        if goal is not None:
            axes.axvline(goal, color=GOAL_COLOR, linestyle="--", label=goal_label)
            axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    return _save(figure, path)
