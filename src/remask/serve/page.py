"""The denoising viewer: GET / (the page) and GET /static/{name} (its script and style sheet).

Plain HTML, CSS and JavaScript shipped inside the package (``serve/static``, package data), so the
page works offline: nothing is fetched from anywhere but this server. The page posts to the API's
own routes with ``stream_steps`` and draws each ``step`` event (and the ``pins`` event of a
request with pinned words) on a canvas of answer positions. Only the files listed in ``ASSETS``
are served; any other name is a 404 in OpenAI's error shape.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

# name -> media type: the whole of what /static serves
ASSETS = {"viewer.js": "text/javascript; charset=utf-8", "viewer.css": "text/css; charset=utf-8"}
PAGE = "index.html"


def asset(name: str) -> bytes:
    """The bytes of a file in ``remask/serve/static``."""
    return resources.files("remask.serve").joinpath("static", name).read_bytes()


def add_page_routes(app: Any) -> None:
    """GET / and GET /static/{name} on ``app``; kept out of the API schema."""
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return Response(asset(PAGE), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Any:
        if name not in ASSETS:
            raise HTTPException(404, f"no such file: /static/{name[:80]}")
        return Response(asset(name), media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})
