"""JWTs from the origin's auth server, as `edgectl token` asks for and shows them."""

from __future__ import annotations

import base64
import json
from typing import Any

from edgectl.client import CliError

TOKEN_ALGORITHMS = ("RS256", "ES256")
TOKEN_TTL_S_DEFAULT = 3600


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (to show what was issued, never to trust it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as error:
        raise CliError(
            "INTERNAL", f"the origin issued something that is not a JWT: {error}"
        ) from None
    if not isinstance(claims, dict):
        raise CliError("INTERNAL", "the origin issued a JWT without a claims object")
    return claims
