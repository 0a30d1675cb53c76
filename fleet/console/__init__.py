"""The operator's web console, served at ``/`` by ``fleetctl serve --http`` (docs/console.md).

Static files only (``index.html``, ``console.css``, ``console.js`` next to this module, package
data): no build step, no CDN, nothing fetched at run time but the fleet API itself. The page holds
no data of its own: every figure comes from ``/api/v1/`` with the token the operator typed (kept in
``sessionStorage``), or none on a loopback listener, so serving the files needs no token.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

FILES = {"console.js": "text/javascript", "console.css": "text/css"}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def add_console(app: web.Application) -> None:
    """Add ``GET /`` (the page) and ``GET /console/{name}`` (its script and style) to ``app``."""
    index = _read("index.html")
    assets = {name: (_read(name), ctype) for name, ctype in FILES.items()}
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    page_headers = {
        **headers,
        "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'",
    }

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=index, content_type="text/html", charset="utf-8", headers=page_headers)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in assets:
            raise web.HTTPNotFound()
        body, ctype = assets[name]
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)

    app.router.add_get("/", page)
    app.router.add_get("/console/{name}", asset)
