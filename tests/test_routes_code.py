"""The route modules carry no dead private helpers: each module-level private function or
class is used in its own module (private names are not imported elsewhere)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import ssegate.gateway.routes

ROUTES = Path(ssegate.gateway.routes.__file__).parent


@pytest.mark.parametrize("module", sorted(ROUTES.glob("*.py")), ids=lambda p: p.name)
def test_every_private_helper_is_used(module: Path) -> None:
    source = module.read_text("utf-8")
    tree = ast.parse(source)
    private = [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.name.startswith("_")
        and not node.name.startswith("__")
    ]
    unused = [name for name in private if len(re.findall(rf"\b{name}\b", source)) < 2]
    assert unused == [], f"{module.name}: never used: {unused}"
