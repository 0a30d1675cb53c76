"""A small HTTP server for bundles (Range requests, for resumable device downloads)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from ota.bundle import sha256_file

log = logging.getLogger(__name__)


def make_app(directory: Path) -> web.Application:
    """Serve ``*.tar`` bundles from ``directory``; ``/index.json`` lists them with size and sha256."""
    directory = Path(directory).resolve()
    digests: dict[tuple[str, float, int], str] = {}

    async def bundle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = (directory / name).resolve()
        if path.parent != directory or not path.is_file() or not name.endswith(".tar"):
            raise web.HTTPNotFound(text=f"no bundle {name}\n")
        return web.FileResponse(path, chunk_size=64 * 1024)  # honours Range: bytes=N-

    async def index(request: web.Request) -> web.Response:
        items = []
        for path in sorted(directory.glob("*.tar")):
            st = path.stat()
            key = (path.name, st.st_mtime, st.st_size)
            if key not in digests:  # chunked, in a thread: a large bundle never blocks the loop
                digests[key] = await asyncio.to_thread(sha256_file, path)
            items.append({"name": path.name, "size": st.st_size, "sha256": digests[key]})
        return web.json_response(items)

    app = web.Application()
    app.router.add_get("/index.json", index)
    app.router.add_get("/{name}", bundle)
    return app
