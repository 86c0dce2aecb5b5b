"""The seed's A/B test at the edge: zero origin latency for the routing decision."""

import random

from edgepop import worker_api as edge

COOKIE = "experiment-checkout-v2"
COOKIE_MAX_AGE_S = 2592000  # 30 days


async def fetch(request: edge.Request, env, ctx) -> edge.Response:
    bucket = request.cookies.get(COOKIE)
    if bucket not in ("control", "variant"):
        bucket = "variant" if random.random() < float(env.VARIANT_SHARE) else "control"
    upstream = env.VARIANT_URL if bucket == "variant" else env.CONTROL_URL
    response = await edge.fetch(upstream)
    answer = edge.Response(response.body, status=response.status, headers=response.headers)
    answer.headers["X-Experiment-Bucket"] = bucket
    answer.headers.add(
        "Set-Cookie", f"{COOKIE}={bucket}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; SameSite=Lax"
    )
    env.ANALYTICS.write_data_point(
        blobs=[bucket, request.path], doubles=[1], indexes=["checkout-experiment"]
    )
    return answer
