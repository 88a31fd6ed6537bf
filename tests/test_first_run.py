"""A fresh clone's first commands: ``make serve`` installs the runtime only; ``make test``
installs the test extra and the system packages the tests drive (``.ci/system-deps``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPS = ROOT / ".ci" / "system-deps"


def _dry_run(target: str, tmp_path: Path) -> str:
    """What ``make <target>`` would run on a machine without a virtualenv yet."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    out = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout


def test_make_serve_installs_the_runtime_only(tmp_path: Path) -> None:
    commands = _dry_run("serve", tmp_path)
    assert "pip install -q -e .\n" in commands
    assert "[test]" not in commands
    assert "system-deps" not in commands
    assert "ssegate serve" in commands


def test_make_test_installs_the_test_extra_and_the_system_packages(tmp_path: Path) -> None:
    commands = _dry_run("test", tmp_path)
    assert "pip install -q -e '.[test]'" in commands
    assert ".ci/system-deps" in commands
    assert commands.index(".ci/system-deps") < commands.index("-m pytest")


def _system_deps(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": str(path), "SSEGATE_SYSTEM_DEPS_DRY_RUN": "1"}
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run(
        [bash, str(DEPS)], capture_output=True, text=True, env=env, check=True, timeout=30
    )


def test_system_deps_installs_what_is_missing(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    planned = _system_deps(empty).stdout
    assert "apt-get install" in planned
    assert "chromium" in planned
    assert "redis-server" in planned
    assert "redis-tools" in planned  # redis-cli joins the tests' Redis Cluster
    assert "nodejs npm" in planned  # the JavaScript clients' runtime
    for name in ("chromium", "redis-server", "redis-cli", "node", "npm"):
        tool = empty / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    assert _system_deps(empty).stdout == ""  # nothing missing: nothing to do
