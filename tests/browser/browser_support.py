"""Shared by the browser tests: the Chromium settings (the dropping proxy is
``ssegate.testing.DroppingProxy``)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The gateway asks clients to reconnect after this long (`retry:`), so resume tests are quick.
RETRY_MS = 300
# The key of the gateway that wants one (the `keyed_gateway` fixture).
API_KEY = "sekret-browser-key-0123456789"
