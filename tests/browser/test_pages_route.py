"""``GET /`` and ``GET /static/…`` over a real socket: types, caching, CSP, no escapes."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

import ssegate.gateway
from ssegate.testing import RunningServer

STATIC = Path(ssegate.gateway.__file__).parent / "static"


def test_chat_page_headers_and_meta(gateway: RunningServer) -> None:
    response = httpx.get(gateway.url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    html = response.text
    assert '<meta charset="utf-8">' in html
    assert 'name="viewport"' in html
    assert "<script>" not in html  # no inline script: the CSP forbids it
    for src in re.findall(r'(?:src|href)="(static/[^"]+)"', html):
        assert httpx.get(f"{gateway.url}/{src}").status_code == 200, src


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/ssegate.js", "text/javascript; charset=utf-8"),
        ("/static/vendor/dompurify/purify.es.mjs", "text/javascript; charset=utf-8"),
        ("/static/chat.css", "text/css; charset=utf-8"),
        ("/static/favicon.svg", "image/svg+xml"),
    ],
)
def test_static_files_have_module_friendly_types_and_etags(
    gateway: RunningServer, path: str, content_type: str
) -> None:
    response = httpx.get(gateway.url + path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == "no-cache"
    again = httpx.get(gateway.url + path, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/static/../_app.py",
        b"/static/%2e%2e/_app.py",
        b"/static/..%2f_app.py",
        b"/static/vendor/../../routes/_pages.py",
        b"/static/",
        b"/static/nope.js",
    ],
)
def test_static_files_never_leave_their_directory(gateway: RunningServer, raw_path: bytes) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        request = client.build_request("GET", "/")
        request.url = request.url.copy_with(raw_path=raw_path)
        response = client.send(request)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_vendored_libraries_carry_licenses_and_versions() -> None:
    vendor = STATIC / "vendor"
    readme = (vendor / "README.md").read_text("utf-8")
    for name, module in (("marked", "marked.esm.js"), ("dompurify", "purify.es.mjs")):
        assert (vendor / name / "LICENSE").is_file()
        head = (vendor / name / module).read_text("utf-8")[:400]
        version = re.search(r"(?:marked v|DOMPurify )(\d+\.\d+\.\d+)", head)
        assert version is not None, name
        assert version.group(1) in readme, f"{name} {version.group(1)} not in vendor/README.md"
