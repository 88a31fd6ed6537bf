"""The ssegate gateway: ``create_app(settings)`` and ``run(settings)``.

:class:`Settings` holds one frozen config group per concern (:class:`ServerConfig`,
:class:`LoggingConfig`, :class:`UpstreamConfig`, :class:`StoreConfig`, :class:`StreamsConfig`,
:class:`SecurityConfig`, :class:`LimitsConfig`); ``Settings.from_options(heartbeat=1, ...)``
builds one from ``ssegate serve``'s option names.

This package imports FastAPI, httpx and uvicorn; ``import ssegate`` does not.
"""

from ._app import create_app, run
from ._settings import (
    LimitsConfig,
    LoggingConfig,
    SecurityConfig,
    ServerConfig,
    Settings,
    StoreConfig,
    StreamsConfig,
    UpstreamConfig,
)

__all__ = [
    "LimitsConfig",
    "LoggingConfig",
    "SecurityConfig",
    "ServerConfig",
    "Settings",
    "StoreConfig",
    "StreamsConfig",
    "UpstreamConfig",
    "create_app",
    "run",
]
