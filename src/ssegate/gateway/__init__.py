"""The ssegate gateway: ``create_app(settings)`` and ``run(settings)``.

This package imports FastAPI, httpx and uvicorn; ``import ssegate`` does not.
"""

from ._app import create_app, run
from ._settings import Settings

__all__ = ["Settings", "create_app", "run"]
