"""The library face: the public names are pinned, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import ssegate

EXPECTED = {
    # the codec
    "Decoder",
    "ServerSentEvent",
    "encode",
    "encode_comment",
    # the emitter
    "SseEmitter",
    "EmitterState",
    "EmitterStatistics",
    # the response
    "EventSourceResponse",
    "EventStreamOptions",
    "EventStreamStatistics",
    "CloseReason",
    "ShutdownSignal",
    "SHUTDOWN_STATE_KEY",
    "StreamItem",
    # the root error and the library's own
    "SsegateError",
    "SseProtocolError",
    "EmitterClosedError",
    "__version__",
}

STORE_ERRORS = {
    "StoreError",
    "StreamNotFoundError",
    "StoreUnavailableError",
    "StoreFullError",
    "StreamGapError",
    "ProducerLostError",
    "IllegalTransitionError",
}
UPSTREAM_ERRORS = {
    "UpstreamError",
    "UpstreamConnectError",
    "UpstreamTimeoutError",
    "UpstreamHTTPError",
    "UpstreamProtocolError",
    "UpstreamStreamError",
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


def test_layer_errors_live_in_their_packages() -> None:
    import ssegate.providers
    import ssegate.store

    for package, names in ((ssegate.store, STORE_ERRORS), (ssegate.providers, UPSTREAM_ERRORS)):
        assert names <= set(package.__all__), package.__name__
        for name in names:
            error = getattr(package, name)
            assert error.__module__.startswith(package.__name__ + "."), (name, error.__module__)
            assert issubclass(error, ssegate.SsegateError)
            assert not hasattr(ssegate, name), f"{name} is not part of the library face"


def test_the_gateway_package_face() -> None:
    import ssegate.gateway

    assert {"create_app", "run", "Settings"} <= set(ssegate.gateway.__all__)


def test_one_version_source() -> None:
    from importlib.metadata import version

    from ssegate.gateway import create_app

    assert ssegate.__version__ == version("ssegate")
    assert create_app().version == ssegate.__version__


def test_no_module_imports_another_modules_private_name() -> None:
    """``from ._x import _y`` couples a module to another's internals: none in ``src/``."""
    import ast
    from pathlib import Path

    src = Path(ssegate.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0 and not (node.module or "").startswith("ssegate"):
                continue  # another library's module
            private = [a.name for a in node.names if a.name.startswith("_")]
            found += [f"{path.relative_to(src)}: {name}" for name in private if name[1] != "_"]
    assert found == []
