"""The seed's personalization at the edge (geo fields come from `request.cf`)."""

import math
from datetime import datetime
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

from workers import Response, WorkerEntrypoint, fetch

CURRENCY = {
    "US": "USD", "GB": "GBP", "JP": "JPY", "AU": "AUD", "IN": "INR", "BR": "BRL",
    "DE": "EUR", "FR": "EUR", "CN": "CNY",
}  # fmt: skip
LANGUAGE = {
    "US": "en", "GB": "en", "JP": "ja", "AU": "en", "IN": "hi", "BR": "pt",
    "DE": "de", "FR": "fr", "CN": "zh",
}  # fmt: skip
SUPPORT_PHONE = {
    "US": "+1-800-123-4567", "GB": "+44-20-7946-0000", "JP": "+81-3-1234-5678",
    "AU": "+61-2-9876-5432", "IN": "+91-22-1234-5678", "BR": "+55-11-1234-5678",
}  # fmt: skip
GREETINGS = {
    "en": ("Good morning", "Good afternoon", "Good evening"),
    "ja": ("おはようございます", "こんにちは", "こんばんは"),
    "hi": ("सुप्रभात", "नमस्कार", "शुभ संध्या"),
    "pt": ("Bom dia", "Boa tarde", "Boa noite"),
    "de": ("Guten Morgen", "Guten Tag", "Guten Abend"),
    "fr": ("Bonjour", "Bon après-midi", "Bonsoir"),
    "zh": ("早上好", "下午好", "晚上好"),
}
GDPR_BANNER = '<div class="gdpr">We use cookies. <a href="/privacy">Manage consent</a></div>'
EARTH_RADIUS_KM = 6371.0


def greeting(language: str, timezone: str) -> str:
    hour = datetime.now(ZoneInfo(timezone)).hour
    morning, afternoon, evening = GREETINGS.get(language, GREETINGS["en"])
    return morning if 5 <= hour < 12 else afternoon if 12 <= hour < 18 else evening


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))


async def personalize_api(request, env) -> Response:
    cf = request.cf
    country = cf.get("country") or "US"
    language = LANGUAGE.get(country, "en")
    stores = (await (await fetch(env.STORES_URL)).json())["stores"]
    for store in stores:
        store["distance_km"] = round(
            distance_km(cf["latitude"], cf["longitude"], store["latitude"], store["longitude"]), 1
        )
    nearest = sorted(stores, key=lambda store: store["distance_km"])[:3]
    deals = (await (await fetch(f"{env.DEALS_URL}?country={country}")).json())["deals"]
    return Response.json(
        {
            "currency": CURRENCY.get(country, "USD"),
            "language": language,
            "nearest_stores": nearest,
            "deals": deals,
            "greeting": f"{greeting(language, cf.get('timezone') or 'UTC')}, {cf.get('city')}",
        }
    )


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        env = self.env
        if urlparse(request.url).path == "/api/personalize":
            return await personalize_api(request, env)
        cf = request.cf
        country = cf.get("country") or "US"
        language = LANGUAGE.get(country, "en")
        template = await (await fetch(env.TEMPLATE_URL)).text()
        html = (
            template.replace("{{CURRENCY}}", CURRENCY.get(country, "USD"))
            .replace("{{LANGUAGE}}", language)
            .replace("{{GREETING}}", greeting(language, cf.get("timezone") or "UTC"))
            .replace("{{LOCAL_PHONE}}", SUPPORT_PHONE.get(country, "+1-800-123-4567"))
            .replace("{{PRIVACY_BANNER}}", GDPR_BANNER if cf.get("is_eu_country") else "")
        )
        return Response(
            html,
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Cache-Control": "public, max-age=60",
                "Vary": "Accept-Language",
            },
        )
