"""Which metric names PromQL in deploy/ may use: those edgepop/metrics.py declares.

The dashboard and the rules are written against the metric contract; a renamed or
misspelled metric would still parse (promtool cannot know), and a panel or an alert
would silently show nothing. These helpers let unit tests hold every query to it.
"""

from __future__ import annotations

import re

from edgepop.metrics import ROLE_METRICS

# A metric name of ours, not part of a recording rule's name (`level:metric:ops`).
EDGE_NAME = re.compile(r"(?<![\w:])(edge_[a-z0-9_]+)(?![\w:])")
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def declared_series_names() -> set[str]:
    """Every series name a node can export (counters with _total, histogram parts)."""
    names: set[str] = set()
    for metrics_class in ROLE_METRICS.values():
        for family in metrics_class("node", "region").registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def edge_names(expr: str) -> set[str]:
    """The edge_* metric names a PromQL expression reads."""
    return set(EDGE_NAME.findall(expr))
