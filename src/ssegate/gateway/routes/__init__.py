"""The gateway's routers."""

from ._anthropic import anthropic_router
from ._learn import router as learn_router
from ._oai_responses import responses_router
from ._openai import router as openai_router
from ._ops import router as ops_router
from ._pages import router as pages_router
from ._responses import document
from ._streams import router as streams_router
from ._ui_chat import ui_chat_router

__all__ = [
    "anthropic_router",
    "document",
    "learn_router",
    "openai_router",
    "ops_router",
    "pages_router",
    "responses_router",
    "streams_router",
    "ui_chat_router",
]
