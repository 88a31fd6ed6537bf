"""The seed's demo: ``GET /learn/sseChat?name=…`` and the seed's page at ``GET /learn/``.

A line-by-line port of the seed's Spring controller: an emitter with a 360 s timeout, logging
completion and error callbacks, ``send("start")`` in the handler, then a plain worker thread that
sends ``"<thread name>: the next index:i"`` for i = 1..10 with a pause between, and completes
(or completes with the error it met).
"""

from __future__ import annotations

import itertools
import logging
import threading
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..._emitter import SseEmitter
from ._responses import EventStream, errors

__all__ = ["router"]

log = logging.getLogger("ssegate.learn")
router = APIRouter(tags=["learn"])

_thread_numbers = itertools.count(1)
_MAX_INTERVAL = 60.0


@router.get(
    "/learn/sseChat",
    summary="The seed's demo stream",
    response_model=None,
    response_class=EventStream,
    responses=errors(400),
)
def sse_chat(
    request: Request,
    name: Annotated[str, Query(min_length=1, pattern=r"\S", description="who is asking")],
    interval: Annotated[
        float, Query(ge=0, le=_MAX_INTERVAL, allow_inf_nan=False, description="seconds")
    ] = 3.0,
) -> Response:
    """Stream ``start`` then ten messages from a worker thread, then complete."""
    emitter = SseEmitter(360.0)
    emitter.on_completion(
        lambda: log.warning("sse complete!!! %s", threading.current_thread().name)
    )
    emitter.on_error(
        lambda exc: log.warning("sse error %s: %r", threading.current_thread().name, exc)
    )
    emitter.send("start")
    stop = threading.Event()

    def work() -> None:
        i = 1
        try:
            while i <= 10:
                emitter.send(f"{threading.current_thread().name}: the next index:{i}")
                log.warning("%s:%d", threading.current_thread().name, i)
                i += 1
                if i <= 10 and stop.wait(interval):
                    break
            emitter.complete()
        except Exception as exc:
            log.warning("catch a ex: %r", exc)
            emitter.complete_with_error(exc)

    # The worker's wait ends early when the client goes away, so no thread sleeps into the void.
    emitter.on_completion(stop.set)
    threading.Thread(target=work, name=f"Thread-{next(_thread_numbers)}", daemon=True).start()
    log.warning("start return sse")
    return emitter


def _page() -> str:
    return resources.files("ssegate.gateway").joinpath("static/learn/index.html").read_text("utf-8")


@router.get("/learn", include_in_schema=False)
def learn_redirect() -> Response:
    """``/learn`` → ``/learn/`` so the page's relative URL resolves."""
    return RedirectResponse("/learn/")


@router.get("/learn/", summary="The seed's EventSource page", response_class=HTMLResponse)
def learn_page() -> HTMLResponse:
    """The seed's front end: an EventSource appending "New message: …"."""
    return HTMLResponse(_page())
