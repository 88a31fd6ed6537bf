"""Node.js for the tests: a folder's locked npm packages installed once, and ``node --test`` runs.

A JavaScript test project (``tests/js``, ``examples/…``) keeps its ``package.json`` and
``package-lock.json``; :func:`npm_installed` runs ``npm ci`` when its ``node_modules`` is missing
or older than the lockfile (``make test`` installs them first, so a test run usually finds them).
Node and npm are required: without them these tests fail with a clear message, never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["JS_DIR", "node_test", "npm_installed"]

JS_DIR = Path(__file__).resolve().parent / "js"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"these tests need Node.js 20+ and npm ({name} is missing: apt-get install nodejs "
            "npm, or run `make test`, which installs them)",
            pytrace=False,
        )
    return path


def npm_installed(folder: Path, *, timeout: float = 300.0) -> Path:
    """``folder`` with its locked packages installed (``npm ci``, only when out of date)."""
    _tool("node")
    npm = _tool("npm")
    installed = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            check=True,
            timeout=timeout,
        )
    return folder


def node_test(
    folder: Path, file: str, name: str, env: dict[str, str], *, timeout: float = 120.0
) -> None:
    """Run the ``node --test`` tests of ``file`` whose name matches ``name`` (a regular
    expression); fail with Node's report unless at least one ran and all passed."""
    done = subprocess.run(
        [_tool("node"), "--test", "--test-reporter=tap", f"--test-name-pattern={name}", file],
        cwd=folder,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "# pass 0" not in report, report
    assert "# fail 0" in report, report
