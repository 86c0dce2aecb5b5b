"""The seed's middleware: bot detection and geolocation routing before the origin."""

import re

from edgepop import worker_api as edge

GOOD_BOTS = re.compile(r"googlebot|bingbot|duckduckbot|applebot|slurp", re.IGNORECASE)
BOTS = re.compile(r"bot|crawler|spider|scraper|curl-bot|python-requests", re.IGNORECASE)


async def fetch(request: edge.Request, env, ctx) -> edge.Response:
    agent = request.headers.get("User-Agent", "")
    if BOTS.search(agent) and not GOOD_BOTS.search(agent):
        return edge.Response("Forbidden", status=403)
    path = request.path
    if request.cf.get("country") == "CN" and not path.startswith("/cn/"):
        path = "/cn" + path
    query = request.url.split("?", 1)[1] if "?" in request.url else ""
    upstream = await edge.fetch(env.ORIGIN_URL + path + (f"?{query}" if query else ""))
    answer = edge.Response(upstream.body, status=upstream.status, headers=upstream.headers)
    answer.headers["X-Edge-Path"] = path
    return answer
