"""WHEP (draft-ietf-wish-whep) endpoint and the viewer page, on aiohttp.

``POST /whep`` with an SDP offer answers ``201 Created`` with the SDP answer and a ``Location``;
``PATCH`` on that resource takes trickled candidates; ``DELETE`` ends the session. ``OPTIONS`` and
CORS headers let a page from any origin use it. An optional bearer token guards every method
but OPTIONS; a viewer limit answers ``503`` with ``Retry-After``; a bad offer or candidate gets
``400``, a wrong content type or a charset other than UTF-8 ``415``, an unknown session ``404``
(whatever the body). Every refusal is a one-line ``text/plain`` reason. ``GET /`` serves the viewer
page, ``GET /api/stats`` the media health as JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from device_agent.media.sdp_checks import excerpt
from device_agent.media.sessions import CapacityError, OfferError, SessionManager, SessionNotFound

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
SDP_CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "us-ascii": "ascii", "ascii": "ascii"}  # SDP is UTF-8
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Patch, Retry-After",
    "Access-Control-Max-Age": "86400",
}
StatsFn = Callable[[], dict[str, Any]]


def _text(status: int, message: str, **headers: str) -> web.Response:
    """A ``text/plain`` answer whose body is ``message`` on one line."""
    line = " ".join(message.split())
    return web.Response(status=status, text=line + "\n", content_type="text/plain", headers=headers)


class BodyRefused(Exception):
    """A request body that cannot be used: the ``status`` to answer and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_text(request: web.Request, what: str) -> str:
    """The body as text: ``415`` for a charset other than UTF-8 (or ASCII), ``413`` when too large,
    ``400`` when the bytes are not text in that charset."""
    charset = request.charset
    codec = "utf-8"
    if charset is not None:
        codec = SDP_CHARSETS.get(charset.strip().lower().replace("_", "-"), "")
        if not codec:
            raise BodyRefused(415, f"charset {excerpt(charset)} is not supported; send the {what} as UTF-8")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyRefused(413, f"the {what} is larger than {MAX_SDP_BYTES} bytes") from None
    try:
        return body.decode(codec)
    except UnicodeDecodeError as exc:
        raise BodyRefused(400, f"the {what} is not {codec.upper()} text (bad byte at {exc.start})") from None


class HttpLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log for this endpoint: a client's malformed HTTP (a bad method, a body left
    unread after a bad request line...) is one WARNING line; any other exception stays an ERROR with
    its traceback, because that is a bug here."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError):
            self.warning("%s: %s", str(msg) % args, excerpt(" ".join(str(exc).split())))
            return
        self.error(msg, *args, exc_info=exc_info, **kwargs)


@web.middleware
async def _cors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # aiohttp's own 404/405/413...: CORS on those too
        exc.headers.update(CORS_HEADERS)
        raise
    response.headers.update(CORS_HEADERS)
    return response


async def viewer_page(request: web.Request) -> web.Response:
    """``GET /``: the viewer page (shipped in the package, no build step)."""
    html = resources.files("device_agent.media.web").joinpath("index.html").read_text()
    return web.Response(text=html, content_type="text/html")


async def viewer_script(request: web.Request) -> web.Response:
    """``GET /viewer.js``."""
    js = resources.files("device_agent.media.web").joinpath("viewer.js").read_text()
    return web.Response(text=js, content_type="application/javascript")


class WhepServer:
    """The HTTP side of viewing: WHEP resources, the page, stats."""

    def __init__(
        self, sessions: SessionManager, stats: StatsFn, token: str = "", retry_after_s: int = 10
    ) -> None:
        self.sessions = sessions
        self.stats = stats
        self.token = token
        self.retry_after_s = retry_after_s
        self.app = web.Application(middlewares=[_cors], client_max_size=MAX_SDP_BYTES)
        self.app.add_routes(
            [
                web.get("/", viewer_page),
                web.get("/viewer.js", viewer_script),
                web.get("/api/stats", self.api_stats),
                web.options("/whep", self.options),
                web.post("/whep", self.post),
                web.options("/whep/{id}", self.options),
                web.patch("/whep/{id}", self.patch),
                web.delete("/whep/{id}", self.delete),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            logger=HttpLog(logging.getLogger(f"{__name__}.http"), {}),
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp keeps the bound sockets here; needed for port 0
        bound = server.sockets if isinstance(server, asyncio.Server) else ()
        self.port = bound[0].getsockname()[1] if bound else port
        log.info(
            "WHEP endpoint on http://%s:%s/whep, viewer page on http://%s:%s/",
            host,
            self.port,
            host,
            self.port,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- helpers -------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), self.token)

    def _unauthorized(self) -> web.Response:
        return _text(401, "a bearer token is required", **{"WWW-Authenticate": 'Bearer realm="device-agent"'})

    # -- routes --------------------------------------------------------------------------------
    async def api_stats(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response(self.stats(), dumps=lambda obj: json.dumps(obj, default=str))

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={"Accept-Post": "application/sdp", "Accept-Patch": "application/trickle-ice-sdpfrag"},
        )

    async def post(self, request: web.Request) -> web.Response:
        received_at = time.monotonic()  # the join's first step (join_timeline.py)
        if not self._authorized(request):
            return self._unauthorized()
        if request.content_type != "application/sdp":
            return _text(
                415, f"expected Content-Type application/sdp, got {excerpt(request.content_type or 'none')}"
            )
        try:
            offer = await read_text(request, "offer")
        except BodyRefused as exc:
            return _text(exc.status, exc.reason)
        if not offer.lstrip().startswith("v=0"):
            return _text(400, "the body is not an SDP offer (it must start with v=0)")
        try:
            session, answer = await self.sessions.create(offer, kind="whep", received_at=received_at)
        except CapacityError as exc:
            return _text(503, str(exc), **{"Retry-After": str(self.retry_after_s)})
        except OfferError as exc:
            return _text(400, str(exc))
        location = f"/whep/{session.id}"
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={
                "Location": location,
                "ETag": f'"{session.id}"',
                "Accept-Patch": "application/trickle-ice-sdpfrag",
            },
        )

    async def patch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        try:
            self.sessions.get(request.match_info["id"])  # an unknown session is 404 whatever the body
        except SessionNotFound:
            return _text(404, "no such session")
        if request.content_type != "application/trickle-ice-sdpfrag":
            return _text(415, "expected Content-Type application/trickle-ice-sdpfrag")
        try:
            await self.sessions.add_candidates(request.match_info["id"], await read_text(request, "fragment"))
        except BodyRefused as exc:
            return _text(exc.status, exc.reason)
        except SessionNotFound:
            return _text(404, "no such session")
        except OfferError as exc:
            return _text(400, str(exc))
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        if not await self.sessions.close(request.match_info["id"], "deleted by viewer"):
            return _text(404, "no such session")
        return web.Response(status=200)
