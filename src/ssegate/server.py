"""Serve an app on uvicorn so that open event streams end promptly on SIGTERM.

``serve(app, host=..., port=...)`` is :func:`uvicorn.run` for one process, with a
:class:`ShutdownAwareServer` that trips a :class:`~ssegate.ShutdownSignal` as shutdown begins:
every :class:`~ssegate.EventSourceResponse` and :class:`~ssegate.SseEmitter` ends cleanly instead
of holding the server open. This module imports uvicorn; ``import ssegate`` does not.
"""

from ._serve import ShutdownAwareServer, serve

__all__ = ["ShutdownAwareServer", "serve"]
