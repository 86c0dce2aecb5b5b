"""The seed's A/B test at the edge: zero origin latency for the routing decision."""

import random
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint, fetch

COOKIE = "experiment-checkout-v2"
COOKIE_MAX_AGE_S = 2592000  # 30 days


def bucket_cookie(request) -> str | None:
    """Our cookie's value; read pair by pair (RFC 6265 §5.4), so another app's odd cookie
    (`prefs={"theme":"dark"}`) spoils nothing."""
    for pair in request.headers.get("Cookie", "").split(";"):
        name, separator, value = pair.partition("=")
        if separator and name.strip() == COOKIE:
            return value.strip().strip('"')
    return None


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        env = self.env
        bucket = bucket_cookie(request)
        if bucket not in ("control", "variant"):
            bucket = "variant" if random.random() < float(env.VARIANT_SHARE) else "control"
        upstream = await fetch(env.VARIANT_URL if bucket == "variant" else env.CONTROL_URL)
        headers = [
            *upstream.headers.items(),
            ("X-Experiment-Bucket", bucket),
            ("Set-Cookie", f"{COOKIE}={bucket}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; SameSite=Lax"),
        ]
        env.ANALYTICS.writeDataPoint(
            {
                "blobs": [bucket, urlparse(request.url).path],
                "doubles": [1],
                "indexes": ["checkout-experiment"],
            }
        )
        return Response(await upstream.bytes(), status=upstream.status, headers=headers)
