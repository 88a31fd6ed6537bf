"""Run one Python block of the docs: ``python docs_python_block.py BLOCK.py``.

Used by ``tests/test_docs_snippets.py``, in a subprocess with the venv's python. The block runs
as ``__main__``, doctest-style: a top-level expression whose line ends in a comment (or is
followed by a comment line) is checked against that comment. A block that builds an ASGI
``app`` is then served, and its GET routes are read to their end.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path
from typing import Any


def _comments(source: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = tok.string[1:].strip()
    return found


def _check(value: Any, shown: str, line: int) -> None:
    try:
        expected = ast.literal_eval(shown)
    except (ValueError, SyntaxError):
        ok = repr(value) == shown
    else:
        ok = value == expected
    if not ok:
        raise AssertionError(f"block line {line}: the comment says {shown}, the value is {value!r}")


def _with_checks(source: str) -> ast.Module:
    """Doctest-style: a top-level expression whose line ends in a comment (or is followed by a
    comment line) is checked against it (``decoder.last_event_id  # '7'``): a Python literal is
    compared by value, anything else with the value's ``repr``."""
    tree = ast.parse(source)
    comments = _comments(source)
    lines = source.splitlines()
    for index, node in enumerate(tree.body):
        end = node.end_lineno or 0
        shown = comments.get(end)
        if shown is None and end < len(lines) and lines[end].lstrip().startswith("#"):
            shown = comments.get(end + 1)  # the value on the line below, as a comment
        if isinstance(node, ast.Expr) and shown:
            call = ast.Call(
                ast.Name("__docs_check", ast.Load()),
                [node.value, ast.Constant(shown), ast.Constant(node.lineno)],
                [],
            )
            tree.body[index] = ast.copy_location(ast.Expr(call), node)
    return ast.fix_missing_locations(tree)


def _exercise_app(app: Any) -> None:
    """A block that builds an ASGI ``app`` runs when it is served: GET every route without
    path parameters (required query parameters get the seed's ``xx``) and read it to its end."""
    import httpx
    from fastapi.routing import APIRoute

    from ssegate import Decoder
    from ssegate.testing import run_server

    routes = [
        r
        for r in app.routes
        if isinstance(r, APIRoute) and "GET" in r.methods and "{" not in r.path
    ]
    if not routes:
        raise AssertionError("the block's app has no GET route to try")
    with run_server(app) as server:
        for route in routes:
            params = {
                p.alias: "xx" for p in route.dependant.query_params if p.field_info.is_required()
            }
            with httpx.stream(
                "GET", server.url + route.path, params=params, timeout=10
            ) as response:
                body = response.read()
            if response.status_code != 200:
                raise AssertionError(
                    f"GET {route.path}: HTTP {response.status_code} {body[:200]!r}"
                )
            if response.headers["content-type"].startswith("text/event-stream"):
                events = Decoder().feed(body)
                if not events:
                    raise AssertionError(f"GET {route.path}: an event stream with no event")
                print(f"GET {route.path}: {len(events)} events", file=sys.stderr)


def run_python_block(path: str) -> None:
    """Run a Python block as ``__main__``, with its comment checks; then serve its ``app``."""
    source = Path(path).read_text("utf-8")
    namespace: dict[str, Any] = {"__name__": "__main__", "__docs_check": _check}
    exec(compile(_with_checks(source), path, "exec"), namespace)
    app = namespace.get("app")
    if app is not None and hasattr(app, "routes"):
        _exercise_app(app)


if __name__ == "__main__":
    run_python_block(sys.argv[1])
