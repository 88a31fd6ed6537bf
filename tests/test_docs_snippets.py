"""Docs are tested: every code block of README.md and docs/*.md runs as written.

The blocks of each file run in order against one real gateway for the session
(``ssegate serve --demo-rate 0``: the demo model, at full speed, on a free port), with one
rewrite: the default address ``localhost:8000`` / ``127.0.0.1:8000`` becomes the gateway's.

- ``sh``/``bash``: bash in a scratch directory (the repository's top-level entries linked in),
  ``set -e -o pipefail``. The blocks of one file share one session, as a reader's terminal does
  (variables carry over). ``make serve`` and ``ssegate serve`` start a server of the block's own
  on a free port (the block's ``localhost:8000`` then means that one), bound to 127.0.0.1, and go
  on once it answers ``/healthz``; the server stops when the block ends. Other make targets
  (``test``, ``check``, ``bench``) are dry-run with ``make -n``: they are the test suite or take
  minutes. ``ssegate chat`` finds the gateway through ``SSEGATE_URL``; upstream keys
  (``OPENAI_API_KEY``, …) are set to dummies.
  A comment right after a command that starts with ``# {`` or ``# [`` (continued on ``#  ``
  lines) is that command's output, compared as JSON. A curl that gets an HTTP error fails the
  block (an error answer is shown with ``output of``, below).
- ``python``: a subprocess with this venv's python. A top-level expression whose line ends in a
  comment is checked against it (``decoder.last_event_id  # "7"``). A block that builds an ASGI
  ``app`` is served, and its GET routes are read to their end.
- ``html`` and ``js`` (both import ``/static/ssegate.js``): a page on a gateway's origin in
  headless Chromium (``tests/browser/test_docs_blocks.py``); it must throw nothing and, with
  ``<!-- docs-test: console: TEXT -->``, log ``TEXT``.
- Blocks that are not code say what they are in an HTML comment on the line above:
  ``<!-- docs-test: output -->`` (what the block above printed, compared structurally: see
  ``docs_snippets.match_sample``), ``output of: COMMAND`` (what COMMAND prints, run like a shell
  block), ``file: NAME`` (written to NAME for the blocks after it), ``request: POST /path`` (a
  JSON body the gateway must accept), ``skip: REASON`` (not runnable here, and why).

A failure names the file, the block's line and what differed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from docs_snippets import (
    BROWSER_LANGS,
    REPO,
    Block,
    ShellScript,
    doc_files,
    instrument,
    match_sample,
    point_at,
    read_blocks,
    run_shell,
    stream_problems,
)
from ssegate.testing import MockUpstream

SHELL = {"sh", "bash", "shell"}
BLOCK_TIMEOUT = 90.0
_SERVES = re.compile(r"^[^#]*\b(?:make serve|ssegate serve)\b", re.MULTILINE)
_DRIVER = Path(__file__).with_name("docs_python_block.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Gateway:
    port: int
    url: str


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``ssegate serve`` with the demo model at full speed, on a free port."""
    port = _free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEGATE_")}
    command = [str(Path(sys.executable).parent / "ssegate"), "serve", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--demo-rate", "0", "--drain-timeout", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the gateway exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the gateway did not answer /healthz in 60 s"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # nothing to wait on but the port: a bounded poll
        yield Gateway(port, url)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


class Failure(Exception):
    """A block did not do what the docs say."""


class DocRun:
    """The blocks of one markdown file, run in order; failures are collected, not raised."""

    def __init__(self, workdir: Path, gateway: Gateway, mock: MockUpstream) -> None:
        self.workdir = workdir
        self.gateway = gateway
        self.mock = mock
        self.last_output: tuple[Block, str] | None = None
        self.failures: list[str] = []
        for entry in REPO.iterdir():
            (workdir / entry.name).symlink_to(entry)

    def env(self, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSEGATE_")}
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            DOCS_TEST_REPO=str(REPO),
            DOCS_TEST_DIR=str(self.workdir),
            DOCS_TEST_PORT=str(port),
            DOCS_TEST_MOCK_URL=self.mock.url,
            DOCS_TEST_SERVER_TIMEOUT="120",
            SSEGATE_URL=f"http://127.0.0.1:{port}",
            SSEGATE_DEMO_RATE="0",
            OPENAI_API_KEY="sk-docs-test-dummy",
            ANTHROPIC_API_KEY="sk-ant-docs-test-dummy",
            DEEPSEEK_API_KEY="sk-docs-test-dummy",
        )
        return env

    def run(self, blocks: list[Block]) -> None:
        for block in blocks:
            try:
                self._one(block)
            except Failure as exc:
                self.failures.append(f"{block.where}: {exc}")

    def _one(self, block: Block) -> None:
        if block.kind == "skip":
            if not block.arg:
                raise Failure("'skip' needs a reason: <!-- docs-test: skip: why -->")
        elif block.kind == "file":
            if not block.arg:
                raise Failure("'file' needs a name: <!-- docs-test: file: NAME -->")
            (self.workdir / block.arg).write_text(block.text, "utf-8")
        elif block.kind == "output":
            if self.last_output is None:
                raise Failure("an output block with no runnable block before it")
            source, printed = self.last_output
            self._compare(block, printed, f"what {source.where} printed")
        elif block.kind == "output of":
            command = Block(block.path, block.line, "sh", block.arg + "\n")
            printed = self._shell(command, errors_expected=True)
            self._compare(block, printed, f"what `{block.arg}` printed")
        elif block.kind == "request":
            self._request(block)
        elif block.kind == "console" or block.lang in BROWSER_LANGS:
            pass  # tests/browser/test_docs_blocks.py
        elif block.lang in SHELL:
            self.last_output = (block, self._shell(block))
        elif block.lang == "python":
            self.last_output = (block, self._python(block))
        else:
            raise Failure(
                "not runnable and not annotated: put <!-- docs-test: output -->, 'output of: "
                "COMMAND', 'file: NAME', 'request: POST /path' or 'skip: REASON' on the line above"
            )

    def _compare(self, sample: Block, printed: str, what: str) -> None:
        difference = match_sample(sample.text, printed, sample.line + 1)
        if difference is not None:
            raise Failure(f"the sample differs from {what}:\n{difference}")

    def _port_for(self, text: str) -> int:
        return _free_port() if _SERVES.search(text) else self.gateway.port

    def _shell(self, block: Block, errors_expected: bool = False) -> str:
        port = self._port_for(block.text)
        script = instrument(point_at(block.text, port), block.line + 1)
        result = run_shell(script, self.workdir, self.env(port), BLOCK_TIMEOUT)
        if result.returncode != 0:
            where = f" (line {result.error_line})" if result.error_line else ""
            status = "ran out of time" if result.returncode is None else f"exit {result.returncode}"
            raise Failure(f"{status}{where}; stderr:\n{result.stderr[-3000:]}")
        if result.http_errors and not errors_expected:
            raise Failure(
                f"curl got {', '.join(result.http_errors)}; stderr:\n{result.stderr[-2000:]}"
            )
        self._check_comments(script, result.outputs)
        return result.rest

    def _check_comments(self, script: ShellScript, outputs: list[str]) -> None:
        problems = []
        for (line, sample), printed in zip(script.expected, outputs, strict=True):
            difference = match_sample(sample, printed, line)
            if difference is not None:
                problems.append(f"the output comment at line {line} differs:\n{difference}")
        if problems:
            raise Failure("\n".join(problems))

    def _python(self, block: Block) -> str:
        port = self._port_for(block.text)
        path = self.workdir / f"block_{block.line}.py"
        path.write_text(point_at(block.text, port), "utf-8")
        try:
            done = subprocess.run(
                [sys.executable, str(_DRIVER), str(path)],
                cwd=self.workdir,
                env=self.env(port),
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise Failure(f"ran out of time ({BLOCK_TIMEOUT:.0f} s)") from None
        if done.returncode != 0:
            raise Failure(f"exit {done.returncode}; stderr:\n{done.stderr[-3000:]}")
        return done.stdout

    def _request(self, block: Block) -> None:
        method, _, path = block.arg.partition(" ")
        response = httpx.request(
            method,
            self.gateway.url + path,
            content=block.text.encode(),
            headers={"content-type": "application/json"},
        )
        if not response.is_success:
            raise Failure(f"{block.arg} answered {response.status_code}: {response.text[:500]}")


DOCS = doc_files()


@pytest.mark.parametrize("doc", DOCS, ids=[d.relative_to(REPO).as_posix() for d in DOCS])
def test_every_block_runs_as_written(
    doc: Path, gateway: Gateway, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    blocks = read_blocks(doc)
    run = DocRun(tmp_path, gateway, mock_upstream)
    run.run(blocks)
    assert not run.failures, "\n\n".join(run.failures)


# ---- options and variables the docs name -------------------------------------------------

_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_VARIABLE = re.compile(r"\bSSEGATE_[A-Z0-9_]+\b")


def _help(*command: str) -> str:
    done = subprocess.run(
        [*command, "--help"], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout


def _named_options(doc: Path) -> list[tuple[int, str]]:
    """``--options`` that ``doc`` names: in code spans of the prose (``--x`` or
    ``ssegate … --x``) and in code blocks after the word ``ssegate``, in ``make serve ARGS`` or
    after ``python -m benchmarks``."""
    found: list[tuple[int, str]] = []
    in_block = False
    logical = ""
    for number, line in enumerate(doc.read_text("utf-8").splitlines(), start=1):
        if line.lstrip().startswith(("```", "~~~")):
            in_block = not in_block
            continue
        if in_block:
            logical += line.rstrip("\\")
            if line.endswith("\\"):
                continue
            text, logical = logical.split(" #", 1)[0], ""
            start = max(text.find(word) for word in ("ssegate ", "make serve", "-m benchmarks"))
            if start >= 0:
                found.extend((number, o) for o in _OPTION.findall(text[start:]))
            continue
        for span in _CODE_SPAN.findall(line):
            if span.startswith("--"):
                found.append((number, _OPTION.findall(span)[0]))
            elif "ssegate " in span:
                found.extend((number, o) for o in _OPTION.findall(span.split("ssegate ", 1)[1]))
    return found


def test_options_and_variables_named_in_the_docs_exist() -> None:
    ssegate = str(Path(sys.executable).parent / "ssegate")
    helps = "".join(_help(ssegate, *c) for c in ((), ("serve",), ("chat",), ("mock-upstream",)))
    helps += _help(sys.executable, "-m", "benchmarks")  # docs/performance.md names its options
    known = set(_OPTION.findall(helps))
    sources = "\n".join(
        p.read_text("utf-8")
        for top in ("src", "tests")
        for p in (REPO / top).rglob("*.py")
        if p.name not in ("test_docs_snippets.py", "docs_snippets.py")
    )
    missing = []
    for doc in DOCS:
        rel = doc.relative_to(REPO).as_posix()
        for number, option in _named_options(doc):
            if option not in known:
                missing.append(
                    f"{rel}:{number}: {option} is no option of ssegate (or the benchmarks)"
                )
        for number, line in enumerate(doc.read_text("utf-8").splitlines(), start=1):
            for name in _VARIABLE.findall(line):
                if name not in helps and f'"{name}"' not in sources:
                    missing.append(f"{rel}:{number}: nothing reads {name}")
    assert not missing, "\n".join(missing)


# ---- the matcher itself --------------------------------------------------------------------

STREAM = (
    'retry: 2000\n\nid: 1\nevent: start\ndata: {"stream_id":"st_x","model":"m","created":17}\n\n'
    'id: 2\nevent: delta\ndata: {"text":"a"}\n\nid: 3\nevent: usage\n'
    'data: {"prompt_tokens":1,"completion_tokens":1}\n\nid: 4\nevent: done\n'
    'data: {"finish_reason":"stop"}\n\n'
)


@pytest.mark.parametrize(
    "sample",
    [
        'retry: 2000\n\nid: 1\nevent: start\ndata: {"stream_id":"st_…","model":"m","created":1}\n'
        '…\nid: 4\nevent: done\ndata: {"finish_reason":"stop"}',
        "retry: 2000\n…\nid: 3\nevent: usage\n…",
        "…\nid: 4\nevent: done\n…",
    ],
)
def test_a_sample_with_elisions_matches_the_stream(sample: str) -> None:
    assert match_sample(sample, STREAM) is None


@pytest.mark.parametrize(
    ("sample", "why"),
    [
        ('retry: 2000\n…\nid: 3\nevent: done\ndata: {"finish_reason":"stop"}', "line 4"),
        ('retry: 2000\n…\nid: 4\nevent: done\ndata: {"finish_reason":"length"}', "line 5"),
        ("retry: 2000\n\nid: 1\nevent: start", "goes on after"),
        ('…\ndata: {"stream_id":"st_…","model":"m","created":1.5}\n…', "line 2"),
    ],
)
def test_a_sample_that_differs_says_where(sample: str, why: str) -> None:
    difference = match_sample(sample, STREAM)
    assert difference is not None
    assert why in difference


def test_json_samples_compare_structure_not_spacing_or_numbers() -> None:
    printed = (
        '{"id":"st_1","object":"stream","created":1.5,"events_url":"/v1/streams/st_1/events"}\n'
    )
    assert (
        match_sample(
            '{"id": "st_…", …, "created": 1.0, "events_url": "/v1/streams/st_…/events"}', printed
        )
        is None
    )
    assert match_sample('{"id": "st_…", "created": 1.0, …}', printed) is not None  # order kept
    assert match_sample('{"id": "st_…", …, "created": 1, …}', printed) is not None  # int ≠ float
    assert match_sample('{"id": "st_…"}', "not json") is not None


def test_stream_problems_find_disorder() -> None:
    assert stream_problems(STREAM) == []
    assert stream_problems(STREAM.replace("id: 3", "id: 7"))
    assert stream_problems(STREAM.replace("event: usage", "event: done", 1))
    swapped = STREAM.replace("event: usage", "event: tmp").replace("event: delta", "event: usage")
    assert stream_problems(swapped.replace("event: tmp", "event: delta"))


# A path of the machine a page was written on (a benchmark run's command line, a traceback):
# it says nothing to a reader and tells a stranger about the machine.
_LOCAL_PATH = re.compile(r"(?<![\w.~-])/(?:root|home|work|tmp|Users)/[\w.-]+")


def test_no_doc_names_a_path_of_the_machine_it_was_written_on() -> None:
    found = [
        f"{doc.relative_to(REPO).as_posix()}:{number}: {match.group()}"
        for doc in DOCS
        for number, line in enumerate(doc.read_text("utf-8").splitlines(), 1)
        for match in _LOCAL_PATH.finditer(line)
    ]
    assert not found, found


def test_a_benchmark_run_records_its_command_without_local_paths() -> None:
    from benchmarks._cli import recorded_command

    command = recorded_command(["--only", "relay", "--json", "/work/x/results.json", "--quick"])
    assert command == "python -m benchmarks --only relay --json results.json --quick"
