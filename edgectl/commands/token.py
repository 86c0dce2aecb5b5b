"""`edgectl token issue`: a JWT signed by the origin's auth server."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from edgectl import tokens, views
from edgectl.client import CliError, EdgeClient

if TYPE_CHECKING:
    from edgectl.cli import CommandSet


def register_token(commands: CommandSet) -> None:
    token = commands.group("token", "JWTs from the origin's auth server")
    issue = token.add(
        "issue",
        cmd_token_issue,
        "print a JWT signed by the origin (accepted by the jwt-auth and api-router workers)",
        json_output=True,
    )
    issue.add_argument("--sub", required=True, metavar="NAME", help="the token's subject")
    issue.add_argument(
        "--alg", choices=tokens.TOKEN_ALGORITHMS, default="RS256", help="default: RS256"
    )
    issue.add_argument(
        "--ttl",
        type=int,
        default=tokens.TOKEN_TTL_S_DEFAULT,
        metavar="SECONDS",
        help=f"valid this long (default: {tokens.TOKEN_TTL_S_DEFAULT})",
    )


def cmd_token_issue(args: argparse.Namespace) -> int:
    if args.ttl < 1:
        raise CliError("INVALID_ARGUMENT", "--ttl must be at least 1 second")
    if not args.sub:
        raise CliError("INVALID_ARGUMENT", "--sub must not be empty")
    with EdgeClient.for_args(args) as client:
        token = client.issue_token(args.sub, args.alg, args.ttl)
    claims = tokens.token_claims(token)
    if args.json:
        views.print_json(
            {
                "token": token,
                "sub": claims.get("sub"),
                "alg": args.alg,
                "expires_at": claims.get("exp"),
            }
        )
        return 0
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    if views.stdout.is_terminal:
        # Only for a person reading the token; `$(edgectl token issue …)` stays quiet.
        expires = claims.get("exp")
        views.stderr.print(
            f"{claims.get('sub')} · {args.alg} · expires "
            f"{views.fmt_unix(expires) if isinstance(expires, int | float) else '?'}",
            style="dim",
            markup=False,
        )
    return 0
