"""``POST /webhooks/bounce``: bounces reported by a relay instead of by mail.

Authenticated by ``Authorization: Bearer <bounces.webhook_secret>``; without a
configured secret the route does not exist (404). The body is either a raw bounce
message (``message/rfc822``, ``multipart/report`` or ``text/plain``), parsed like a
bounce from the mailbox, or JSON: one object or a list of objects with ``email``,
``kind`` (``hard`` or ``soft``; an enhanced ``status`` such as ``5.7.1`` overrides it),
optionally ``diagnostic``, and what proves the bounce is about mailer's own mail:
``envelope_from`` (the signed VERP address the message was sent from, the relay's
"return path" or "envelope sender") or ``message_id`` (its Message-ID).

Either form is held to the rule of bounces.py: a report that does not match a
message mailer sent to that address is ignored (and logged), never suppresses, and
is listed as ignored in the answer.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailer.bounces import BounceReport, parse_dsn, record_bounce
from mailer.smtpstatus import Verdict, enhanced_code, permanent_verdict
from mailer.tokens import address_extension
from mailer.web.jsonbody import TooDeep, parse_json
from mailer.web.state import web_state

MAX_BODY_BYTES = 10 * 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def bounce_webhook(request: Request) -> Response:
    state = web_state(request)
    secret = state.settings.bounces.webhook_secret
    if not secret:
        return _error(404, "the bounce webhook is not enabled")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
        return _error(401, "a valid bearer secret is required")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _error(413, "the body is larger than 10 MB")
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        try:
            reports = _reports_from_json(parse_json(body))
        except TooDeep as exc:
            return _error(400, str(exc))
        except (ValueError, TypeError) as exc:
            return _error(422, f"invalid bounce JSON: {exc}")
    else:
        reports = parse_dsn(bytes(body))
        if not reports:
            return _error(422, "no failed recipient found in the message")
    results = [await record_bounce(state.db, state.settings, report) for report in reports]
    return JSONResponse(
        {
            "recorded": sum(result.consumed for result in results),
            "ignored": sum(not result.consumed for result in results),
            "results": [result.summary for result in results],
        }
    )


def _reports_from_json(data: Any) -> list[BounceReport]:
    items = data if isinstance(data, list) else [data]
    if not items or len(items) > 1000:
        raise ValueError("expected 1 to 1000 bounce objects")
    reports = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each bounce must be an object")
        address, kind = item.get("email"), item.get("kind")
        if not isinstance(address, str) or "@" not in address or len(address) > 320:
            raise ValueError("'email' must be an email address")
        if kind not in ("hard", "soft"):
            raise ValueError("'kind' must be 'hard' or 'soft'")
        status, diagnostic = item.get("status"), item.get("diagnostic")
        envelope_from, message_id = item.get("envelope_from"), item.get("message_id")
        if not isinstance(envelope_from, str | None) or not isinstance(message_id, str | None):
            raise ValueError("'envelope_from' and 'message_id' must be strings")
        if not envelope_from and not message_id:
            raise ValueError(
                "each bounce needs 'envelope_from' (the VERP address mailer sent from) or "
                "'message_id', so that it can be matched to a message mailer sent"
            )
        extension = address_extension(envelope_from) if envelope_from else None
        code = enhanced_code(str(status)) if status is not None else None
        if code and code.startswith("5."):
            verdict = permanent_verdict(code)
        else:
            verdict = Verdict.HARD if kind == "hard" else Verdict.SOFT
        reports.append(
            BounceReport(
                address.strip(),
                verdict,
                str(status)[:20] if status is not None else None,
                str(diagnostic)[:2000] if diagnostic is not None else None,
                (extension,) if extension else (),
                message_id.strip()[:300] if message_id else None,
            )
        )
    return reports
