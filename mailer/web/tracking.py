"""/r/<token>: a digest's tracked link (count, then 302 to the release); /o/<token>:
its open image. The rules and what is stored are in mailer.engagement."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailer import engagement
from mailer.web.state import web_state

NO_STORE = {"cache-control": "no-store, private"}


def _visit(request: Request) -> engagement.Visit:
    return engagement.Visit(
        method=request.method,
        client=request.client.host if request.client else "",
        user_agent=request.headers.get("user-agent", ""),
    )


async def follow(request: Request) -> Response:
    state = web_state(request)
    try:
        target = await engagement.record_click(
            state.db,
            state.tracker,
            request.path_params["token"],
            request.path_params.get("reader"),
            _visit(request),
            now=state.now(),
        )
    except engagement.UnknownLink:
        raise HTTPException(
            404, "This link is not one of ours, or no longer leads anywhere."
        ) from None
    return RedirectResponse(target, status_code=302, headers=NO_STORE)


async def open_image(request: Request) -> Response:
    state = web_state(request)
    try:
        await engagement.record_open(
            state.db,
            state.tracker,
            request.path_params["token"],
            request.path_params.get("reader"),
            _visit(request),
            now=state.now(),
        )
    except engagement.UnknownLink:
        raise HTTPException(404, "There is no image at this address.") from None
    return Response(engagement.PIXEL_GIF, media_type="image/gif", headers=NO_STORE)


TRACKED_PREFIXES = ("/r/", "/o/")


class AnonymousTrackingAccessLog(logging.Filter):
    """uvicorn's access log writes each request's client address beside its path: for
    /r/ and /o/ that would keep a reader's IP address with what they clicked, which
    tracking promises not to keep. Those lines lose the address; the rest stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(args, tuple)
            and len(args) >= 3
            and isinstance(args[2], str)
            and args[2].startswith(TRACKED_PREFIXES)
        ):
            record.args = ("-", *args[1:])
        return True
