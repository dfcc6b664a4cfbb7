"""GET /metrics: Prometheus metrics, behind a bearer token when admin.metrics_token is set."""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from mailer.metrics import exposition
from mailer.web.state import web_state


async def metrics(request: Request) -> Response:
    state = web_state(request)
    token = state.settings.admin.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return PlainTextResponse(
                "metrics need Authorization: Bearer <admin.metrics_token>\n",
                status_code=401,
                headers={"www-authenticate": 'Bearer realm="metrics"'},
            )
    body = await exposition(state.db, state.now())
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})
