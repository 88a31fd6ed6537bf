"""Test and benchmark helpers: a real uvicorn server on a free port, the mock LLM upstream."""

from ._server import RunningServer, run_server

__all__ = ["RunningServer", "run_server"]
