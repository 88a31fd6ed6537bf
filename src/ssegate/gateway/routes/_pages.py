"""The chat page at ``GET /`` and its files at ``GET /static/…`` (no build step, nothing remote).

The page sends a Content-Security-Policy that allows only this origin's scripts, styles and
connections, and no inline script: model output is rendered as sanitised markdown, and should
the sanitiser ever miss something, injected markup still cannot run code or leak to another
origin.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["CHAT_PAGE_CSP", "router"]

router = APIRouter(include_in_schema=False)

_STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

#: The chat page's Content-Security-Policy.
CHAT_PAGE_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

_PAGE_HEADERS = {
    "Content-Security-Policy": CHAT_PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# Module scripts must be served with a JavaScript MIME type; the platform's mime.types decides
# otherwise (and some lack .mjs), so these are fixed here.
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}


class _StaticFiles(StaticFiles):
    """Starlette's static files (ETag, 304, no path traversal) with fixed content types."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = _TYPES.get(os.path.splitext(os.fspath(full_path))[1].lower())
        if media_type is not None and isinstance(response, FileResponse):
            response.headers["content-type"] = media_type
        # Revalidate every time (cheap with the ETag): a new version shows without a hard reload.
        response.headers["cache-control"] = "no-cache"
        response.headers["x-content-type-options"] = "nosniff"
        return response


@cache
def _static_files() -> _StaticFiles:
    return _StaticFiles(directory=_STATIC_DIR)


def _page() -> str:
    return (_STATIC_DIR / "index.html").read_text("utf-8")


@router.get("/", response_class=HTMLResponse)
def chat_page() -> HTMLResponse:
    """The chat page."""
    return HTMLResponse(_page(), headers=_PAGE_HEADERS)


def _normalize(path: str) -> str:
    # The normalisation StaticFiles applies to a mounted path (pure string work, no I/O);
    # StaticFiles itself refuses anything that would leave the directory.
    return os.path.normpath(os.path.join(*path.split("/"))) if path else "."


@router.get("/static/{path:path}")
async def static_file(request: Request, path: str) -> Response:
    """A file of the chat page (``ssegate.js`` is the browser client library)."""
    return await _static_files().get_response(_normalize(path), request.scope)
