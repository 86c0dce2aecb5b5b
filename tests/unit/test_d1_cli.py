"""edgectl d1 execute --json: a failure is printed in wrangler's error shape, with D1's
message (the pure formatting; tests/integration/test_sql_limits.py runs the command)."""

from __future__ import annotations

from edgectl.client import CliError
from edgectl.commands.d1 import d1_error_json


def test_edgectl_prints_wranglers_error_shape_with_d1s_message() -> None:
    failure = CliError(
        "INVALID_ARGUMENT",
        "D1_ERROR: no such table: nope: SQLITE_ERROR (tokyo-1)",
        message="D1_ERROR: no such table: nope: SQLITE_ERROR",
        where="tokyo-1",
    )
    assert d1_error_json(failure) == {
        "error": {
            "text": "D1_ERROR: no such table: nope: SQLITE_ERROR",
            "notes": [{"text": "INVALID_ARGUMENT from tokyo-1"}],
            "kind": "error",
            "name": "D1Error",
            "code": "INVALID_ARGUMENT",
        }
    }
    missing = d1_error_json(CliError("NOT_FOUND", "no database 'x'"))
    assert missing["error"]["text"] == "D1_ERROR: no database 'x'"
    assert missing["error"]["notes"] == []
