"""The Vercel AI SDK's own client code (npm's ``ai``: ``DefaultChatTransport``,
``readUIMessageStream``, ``AbstractChat`` — what ``useChat`` wraps) against a real gateway whose
model is the real mock upstream. The JavaScript is ``tests/js/ui_chat.test.mjs``; each test here
runs the ``node --test`` tests of one acceptance point, with the gateway's and the mock's URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node_support import JS_DIR, node_test, npm_installed
from ssegate.gateway import Settings, create_app
from ssegate.testing import MockUpstream, RunningServer, run_server


@pytest.fixture(scope="session")
def js_clients() -> Path:
    return npm_installed(JS_DIR)


@pytest.fixture(scope="module")
def gateway(mock_upstream: MockUpstream) -> Iterator[RunningServer]:
    # A reload (or a cut) leaves the stream without a reader for a while: the grace is longer
    # than any of these tests, so only an explicit stop cancels.
    settings = Settings.from_options(
        provider="openai", base_url=mock_upstream.url + "/v1", model="mock", disconnect_grace=30
    )
    with run_server(create_app(settings)) as server:
        yield server


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a streamed answer assembles", id="text"),
        pytest.param("reasoning and tool-call parts assemble", id="reasoning-and-tools"),
        pytest.param("an upstream fault", id="faults"),
        pytest.param("reconnectToStream after a cut", id="reconnect-after-cut"),
        pytest.param("useChat's resume after a reload", id="resume-after-reload"),
        pytest.param("204 with no active stream", id="nothing-to-resume"),
        pytest.param("every part of every kind of stream", id="chunk-schema"),
    ],
)
def test_ai_sdk_client(
    name: str, js_clients: Path, gateway: RunningServer, mock: MockUpstream
) -> None:
    env = {"SSEGATE_URL": gateway.url, "SSEGATE_MOCK_URL": mock.url}
    node_test(js_clients, "ui_chat.test.mjs", name, env)
