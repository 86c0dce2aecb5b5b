"""Config files read through declared models: YAML in, a pydantic model out, and errors
that name the file, the line and the field (`cluster.yaml:7: regions[1].pop_nodes: ...`).

Each file format declares its model once (`edgepop.topology_file`, `edgepop.worker_yaml`,
`edgepop.wrangler_model`); this module is what they share: reading the YAML with each
value's line, and turning a ValidationError (or a rule checked after the model, with
`Located.at`) into one message. A wrangler config (JSON5 or TOML) is read without lines:
its errors name the file and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from pydantic import BaseModel

# pydantic itself is imported by the models, when a file is read: not by every process
# that only handles a Topology (the CLI starts ~0.1 s faster without it).
Path = tuple[str | int, ...]
M = TypeVar("M", bound="BaseModel")

# What a type error says, in the words of the field's type.
_TYPE_WORDS = {
    "string_type": "must be str",
    "int_type": "must be int",
    "int_from_float": "must be int",
    "float_type": "must be float",
    "bool_type": "must be bool",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "missing": "required",
    "extra_forbidden": "unknown field",
    "too_short": "must be a non-empty list",
    "string_too_short": "must not be empty",
}


def dotted(path: Path) -> str:
    """`regions[1].pop_nodes` from ("regions", 1, "pop_nodes")."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "top level"


def _lines(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, key.value)
            _lines(value, child, lines)
            lines[child] = key.start_mark.line + 1  # the key's line names the field
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), lines)


@dataclass
class Located:
    """A parsed file and where each of its values is, for error messages."""

    source: str
    raw: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        # A value the file does not hold (a missing field) is reported at its parent.
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def at(self, path: Path, message: str) -> str:
        """`source:LINE: field: message` (no line for data that came from no file)."""
        line = self.line_of(path) if self.lines else None
        where = f"{self.source}:{line}" if line is not None else self.source
        return f"{where}: {dotted(path)}: {message}"


def parse_yaml(text: str | bytes, source: str) -> Located:
    """Raises yaml.YAMLError (which carries its own line) on text that is not YAML."""
    # One parse: the node tree gives the lines, and the same tree the values.
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        raw = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    lines: dict[Path, int] = {}
    if node is not None:
        _lines(node, (), lines)
    return Located(source, raw, lines)


def validate(model: type[M], located: Located, error: type[Exception]) -> M:
    """The file as `model`, or `error` naming the first problem's line and field."""
    from pydantic import ValidationError

    try:
        return model.model_validate(located.raw)
    except ValidationError as invalid:
        first = invalid.errors(include_url=False)[0]
        raise error(describe(first, located)) from None


def describe(problem: Any, located: Located) -> str:
    path: Sequence[str | int] = tuple(problem["loc"])
    if path and path[-1] == "[key]":
        path = path[:-2]  # a key that is not allowed: named in the message, at its map
    kind = problem["type"]
    message = _TYPE_WORDS.get(kind) or str(problem["msg"])
    if kind == "greater_than_equal" and problem.get("ctx", {}).get("ge") == 0:
        message = "must not be negative"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        message = f"{message}, got {problem.get('input')!r}"
    # "Value error, must be ..." from our own validators: the rule, without the prefix.
    message = message.removeprefix("Value error, ")
    return located.at(tuple(path), message)
