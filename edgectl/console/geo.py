"""The console's world map: Natural Earth's land as one SVG path, and where a region sits.

Plate carrée (x from longitude, y from latitude), cropped to the latitudes people live
in: a region is a point at its coordinates, a link is a straight line between two, and
nothing needs a projection library in the browser. The land comes from
`static/land-110m.json` (world-atlas's TopoJSON of Natural Earth 1:110m, shipped in the
repository: nothing is fetched at run time), decoded here once per process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAND_FILE = Path(__file__).with_name("static") / "land-110m.json"
MAP_WIDTH = 1000.0
# The map shows latitudes NORTH_LAT..SOUTH_LAT: Antarctica is cut off (no region is there,
# and the ring that circles the pole would need clipping).
NORTH_LAT = 84.0
SOUTH_LAT = -58.0
MAP_HEIGHT = round(MAP_WIDTH * (NORTH_LAT - SOUTH_LAT) / 360.0, 1)
# A ring that steps more than this in longitude crosses the antimeridian: a new subpath.
ANTIMERIDIAN_JUMP_DEG = 180.0

Point = tuple[float, float]  # (longitude, latitude)


@dataclass(frozen=True)
class WorldMap:
    width: float
    height: float
    land_path: str

    def to_json(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "land": self.land_path}


def project(latitude: float, longitude: float) -> tuple[float, float]:
    """Map coordinates (x, y) of a point; y grows southwards, as SVG's does."""
    x = (longitude + 180.0) / 360.0 * MAP_WIDTH
    y = (NORTH_LAT - latitude) / (NORTH_LAT - SOUTH_LAT) * MAP_HEIGHT
    return round(x, 1), round(y, 1)


def decode_arcs(topology: dict[str, Any]) -> list[list[Point]]:
    """TopoJSON's quantised, delta-encoded arcs as lists of (longitude, latitude)."""
    (scale_x, scale_y), (shift_x, shift_y) = (
        topology["transform"]["scale"],
        topology["transform"]["translate"],
    )
    arcs = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x += dx
            y += dy
            points.append((x * scale_x + shift_x, y * scale_y + shift_y))
        arcs.append(points)
    return arcs


def _ring(arcs: list[list[Point]], indexes: Sequence[int]) -> list[Point]:
    """One ring from its arcs (a negative index ~i is arc i reversed); arcs share ends."""
    points: list[Point] = []
    for index in indexes:
        arc = arcs[index] if index >= 0 else arcs[~index][::-1]
        points.extend(arc if not points else arc[1:])
    return points


def _rings(geometry: dict[str, Any]) -> Iterator[Sequence[int]]:
    kind = geometry.get("type")
    if kind == "Polygon":
        yield from geometry["arcs"]
    elif kind == "MultiPolygon":
        for polygon in geometry["arcs"]:
            yield from polygon
    elif kind == "GeometryCollection":
        for member in geometry["geometries"]:
            yield from _rings(member)


def _subpaths(ring: list[Point]) -> list[list[Point]]:
    """A ring cut where it crosses the antimeridian; each part is closed on its own,
    along the map's edge, which is where both of its cut ends lie."""
    parts: list[list[Point]] = [[]]
    for point in ring:
        part = parts[-1]
        if part and abs(point[0] - part[-1][0]) > ANTIMERIDIAN_JUMP_DEG:
            parts.append(part := [])
        part.append(point)
    # The ring's start is not a cut: its last part goes on into its first.
    if len(parts) > 1 and abs(parts[0][0][0] - parts[-1][-1][0]) <= ANTIMERIDIAN_JUMP_DEG:
        parts[0] = parts.pop() + parts[0]
    return parts


def ring_path(points: Sequence[Point]) -> str:
    if len(points) < 3:
        return ""
    projected = [project(latitude, longitude) for longitude, latitude in points]
    head, *rest = projected
    return f"M{head[0]:g},{head[1]:g}" + "".join(f"L{x:g},{y:g}" for x, y in rest) + "Z"


def land_path(topology: dict[str, Any], object_name: str = "land") -> str:
    """Every land ring of `object_name` as one SVG path (fill-rule evenodd for holes)."""
    arcs = decode_arcs(topology)
    parts = []
    for indexes in _rings(topology["objects"][object_name]):
        for subpath in _subpaths(_ring(arcs, indexes)):
            path = ring_path(subpath)
            if path:
                parts.append(path)
    return "".join(parts)


def world_map(land_file: Path = LAND_FILE) -> WorldMap:
    return WorldMap(MAP_WIDTH, MAP_HEIGHT, land_path(json.loads(land_file.read_text())))
