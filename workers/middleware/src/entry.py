"""The seed's middleware: bot detection and geolocation routing before the origin."""

import re
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint, fetch

GOOD_BOTS = re.compile(r"googlebot|bingbot|duckduckbot|applebot|slurp", re.IGNORECASE)
BOTS = re.compile(r"bot|crawler|spider|scraper|curl-bot|python-requests", re.IGNORECASE)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        agent = request.headers.get("User-Agent", "")
        if BOTS.search(agent) and not GOOD_BOTS.search(agent):
            return Response("Forbidden", status=403)
        url = urlparse(request.url)
        path = url.path or "/"
        if request.cf.get("country") == "CN" and not path.startswith("/cn/"):
            path = "/cn" + path
        upstream = await fetch(self.env.ORIGIN_URL + path + (f"?{url.query}" if url.query else ""))
        headers = [*upstream.headers.items(), ("X-Edge-Path", path)]
        return Response(await upstream.bytes(), status=upstream.status, headers=headers)
