"""Who and where a PoP is: what most of its components name in what they answer and count."""

from __future__ import annotations

from typing import Protocol

from edgepop.metrics import PopMetrics


class PopIdentity(Protocol):
    """A PoP's name and region, and the metrics it exports (pop_node.node.PopNode)."""

    @property
    def name(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def metrics(self) -> PopMetrics: ...
