"""``/ui``: the web dashboard, static files shipped in ``api/ui/`` (no build step, no CDN).

The page reads everything through the public REST API with the caller's bearer token, which
it takes once from the URL fragment (``/ui/#token=...``; fragments never reach a server or
its logs) and keeps in ``sessionStorage``. The files themselves hold no data, so they are
served without authentication, under a Content-Security-Policy that allows only this
origin's scripts, styles and API (no inline script, no framing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response

from api.errors import NotFound

router = APIRouter(prefix="/ui", include_in_schema=False)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
"""Where the dashboard's files live."""

ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "schedule.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The files served, by name, with their media type: a fixed list, so no path reaches outside ``UI_DIR``."""

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",  # the REST API and the event stream, same origin
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""Applied to every ``/ui`` response."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate each load, so a deployment's new files are used at once.
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard file {name!r}")
    return Response((UI_DIR / name).read_bytes(), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("")
async def ui_root() -> RedirectResponse:
    """``/ui`` without the slash: to ``/ui/``, so the page's relative asset links resolve."""
    return RedirectResponse("/ui/", status_code=308, headers=SECURITY_HEADERS)


@router.get("/")
async def ui_index() -> Response:
    """The dashboard's page."""
    return _asset("index.html")


@router.get("/{name}")
async def ui_asset(name: Annotated[str, PathParam(max_length=100)]) -> Response:
    """One of the dashboard's scripts, styles or images (404 problem for anything else)."""
    return _asset(name)
