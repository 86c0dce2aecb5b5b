"""What every config file model shares: strict types, unknown fields refused, and text
checked against a pattern with a refusal in the file's own words. Imported only by the
models (pydantic loads when a file is read; see `edgepop.configfile`)."""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """`true` is not a count and `"2"` not a number; a field the format lacks is an error."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def fullmatch(pattern: str, refusal: str) -> Callable[[str], str]:
    """A validator (for `AfterValidator`) of text that must match `pattern` whole;
    `refusal` is its error, `{value!r}` standing for the text refused."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(refusal.format(value=value))
        return value

    return check
