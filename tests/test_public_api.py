"""The library face: the public names are pinned, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import ssegate

EXPECTED = {
    "SHUTDOWN_STATE_KEY",
    "CloseReason",
    "Decoder",
    "EmitterClosedError",
    "EmitterState",
    "EmitterStatistics",
    "EventSourceResponse",
    "EventStreamOptions",
    "EventStreamStatistics",
    "IllegalTransitionError",
    "ProducerLostError",
    "ServerSentEvent",
    "ShutdownSignal",
    "ShuttingDownError",
    "SseEmitter",
    "SseProtocolError",
    "SsegateError",
    "StoreError",
    "StoreFullError",
    "StoreUnavailableError",
    "StreamGapError",
    "StreamItem",
    "StreamNotFoundError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamStreamError",
    "UpstreamTimeoutError",
    "__version__",
    "encode",
    "encode_comment",
}


def test_public_names_are_pinned() -> None:
    assert set(ssegate.__all__) == EXPECTED
    for name in ssegate.__all__:
        assert hasattr(ssegate, name), name


def test_public_names_have_docstrings() -> None:
    for name in ssegate.__all__:
        obj = getattr(ssegate, name)
        if callable(obj) and not name.startswith("_"):
            assert obj.__doc__, f"{name} has no docstring"


def test_errors_carry_their_wire_form() -> None:
    for name in ssegate.__all__:
        obj = getattr(ssegate, name)
        if isinstance(obj, type) and issubclass(obj, ssegate.SsegateError):
            assert isinstance(obj.code, str)
            assert obj.code
            assert isinstance(obj.retryable, bool)


def test_import_ssegate_does_not_import_the_gateway_stack() -> None:
    code = (
        "import sys, ssegate\n"
        "print(','.join(m for m in ('fastapi', 'redis', 'httpx', 'uvicorn', 'pydantic')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
