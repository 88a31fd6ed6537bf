"""Reading, running and checking the code blocks of README.md and docs/*.md.

``tests/test_docs_snippets.py`` drives this module; its docstring says what a block means. This
module holds the parts: the markdown reader (:func:`read_blocks`), the matcher that compares a
sample output with what a command really printed (:func:`match_sample`) and the shell runner
(:func:`run_shell`); ``docs_python_block.py`` runs a Python block.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ELLIPSIS = "…"

# ---- reading ------------------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_ANNOTATION = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
KINDS = ("skip", "output", "output of", "file", "request", "console")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text, and its annotation."""

    path: str  # relative to the repository
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    kind: str | None = None  # one of KINDS, from a `<!-- docs-test: kind: arg -->` just above
    arg: str = ""

    @property
    def where(self) -> str:
        label = f"```{self.lang}" if self.lang else "``` (no language)"
        return f"{self.path}:{self.line} {label}"


def _annotation(line: str) -> tuple[str, str] | None:
    match = _ANNOTATION.match(line)
    if match is None:
        return None
    body = match.group("body")
    for kind in sorted(KINDS, key=len, reverse=True):
        if body == kind or body.startswith(kind + ":"):
            return kind, body[len(kind) + 1 :].strip()
    raise ValueError(f"unknown docs-test annotation {body!r} (known: {', '.join(KINDS)})")


def read_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a markdown file, with the annotation on the line above it."""
    lines = path.read_text("utf-8").splitlines()
    rel = path.relative_to(REPO).as_posix()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        try:
            note = _annotation(above)
        except ValueError as exc:
            raise ValueError(f"{rel}:{i + 1}: {exc}") from None
        kind, arg = note if note else (None, "")
        info = opening.group("info").strip()
        lang = info.split()[0] if info else ""
        blocks.append(Block(rel, i + 1, lang, "\n".join(body) + "\n", kind, arg))
        i = end + 1
    return blocks


def doc_files() -> list[Path]:
    """README.md and docs/*.md."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


#: Languages of blocks that run in the browser (tests/browser/test_docs_blocks.py).
BROWSER_LANGS = frozenset({"html", "js", "javascript"})


def browser_blocks() -> list[Block]:
    """The blocks of every doc that run in the browser."""
    return [
        b
        for d in doc_files()
        for b in read_blocks(d)
        if b.kind != "skip" and (b.lang in BROWSER_LANGS or b.kind == "console")
    ]


_DEFAULT_ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")


def point_at(text: str, port: int) -> str:
    """The one rewrite a block gets: the default address ``localhost:8000`` (or
    ``127.0.0.1:8000``) becomes the test gateway's."""
    return _DEFAULT_ADDRESS.sub(f"127.0.0.1:{port}", text)


# ---- comparing a sample output with the real one ------------------------------------------

_NUMBER = re.compile(r"-?\d+(?P<frac>\.\d+)?(?P<exp>[eE][-+]?\d+)?")
_INT = r"-?\d+(?![\d.eE])"
_FLOAT = r"-?\d+(?:\.\d+(?:[eE][-+]?\d+)?|[eE][-+]?\d+)"
_IN_STRING = r'(?:[^"\\]|\\.)*?'
_JSON_LINE = re.compile(r"^(?P<field>data: ?)(?P<json>[\[{].*)$")


def _compact(text: str) -> str:
    """JSON text without the whitespace outside strings."""
    out: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif not ch.isspace():
            out.append(ch)
    return "".join(out)


def _json_pattern(sample: str) -> str:
    """A regex for compact JSON text matching ``sample``: ``…`` stands for anything (inside a
    string or between members), a number for any number of its kind (integer or not), the
    rest is literal."""
    text = _compact(sample)
    parts: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            end = i + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            literal = text[i : end + 1]
            parts.append(_IN_STRING.join(re.escape(piece) for piece in literal.split(ELLIPSIS)))
            i = end + 1
        elif ch == ELLIPSIS:
            parts.append(".*?")
            i += 1
        elif (number := _NUMBER.match(text, i)) is not None and (ch == "-" or ch.isdigit()):
            parts.append(_FLOAT if number.group("frac") or number.group("exp") else _INT)
            i = number.end()
        else:
            parts.append(re.escape(ch))
            i += 1
    return "".join(parts)


def _normalize_json(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _line_pattern(line: str) -> str:
    if line.strip() == ELLIPSIS:
        return r"(?:[^\n]*\n)*?"
    match = _JSON_LINE.match(line)
    if match is not None:
        return re.escape(match.group("field")) + _json_pattern(match.group("json")) + r"\n"
    return "[^\n]*?".join(re.escape(piece) for piece in line.split(ELLIPSIS)) + r"\n"


def _normalize_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    out = []
    for line in lines:
        match = _JSON_LINE.match(line)
        compact = _normalize_json(match.group("json")) if match else None
        out.append(match.group("field") + compact if match and compact is not None else line)
    return out


def _show(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def match_sample(sample: str, actual: str, first_line: int = 1) -> str | None:
    """Compare a sample output from the docs with what the command really printed.

    Returns ``None`` when they agree, else what differs. A sample that starts with ``{`` or
    ``[`` is JSON and is compared as JSON (whitespace ignored); any other sample line by line,
    where a line ``…`` stands for any number of lines, ``…`` inside a line for any text, and a
    ``data:`` line holding JSON is compared as JSON. In JSON a number matches any number of its
    kind: timestamps and token counts differ from run to run, the ``id:`` lines of a stream do
    not. Streams are also checked for order (see :func:`stream_problems`). ``first_line`` is
    the sample's first line in its file, for the message.
    """
    if sample.strip().startswith(("{", "[")):
        compact = _normalize_json(actual.strip())
        if compact is None:
            return f"expected JSON like {_show(sample.strip())}\nbut got {_show(actual)!r}"
        if re.fullmatch(_json_pattern(sample), compact, re.DOTALL) is None:
            return f"expected JSON like\n  {_show(_compact(sample))}\nbut got\n  {_show(compact)}"
        return None
    wanted = sample.strip("\n").splitlines()
    got = "\n".join(_normalize_lines(actual)) + "\n"
    problems = stream_problems(got)
    if re.fullmatch("".join(_line_pattern(line) for line in wanted), got) is None:
        return _first_difference(wanted, got, first_line) + "".join(f"\n{p}" for p in problems)
    if problems:
        return "\n".join(problems)
    return None


def _first_difference(wanted: list[str], got: str, first_line: int) -> str:
    matched = 0
    end = 0
    for k in range(1, len(wanted) + 1):
        prefix = re.match("".join(_line_pattern(line) for line in wanted[:k]), got)
        if prefix is None:
            break
        matched, end = k, prefix.end()
    if matched == len(wanted):
        rest = got[end:].splitlines()
        return (
            f"the output goes on after the sample's last line ({len(rest)} more lines, "
            f"first: {_show(rest[0]) if rest else ''!r}); end the sample with a line '…' "
            "if that is meant"
        )
    near = got[end:].splitlines()[:3]
    return (
        f"line {first_line + matched}: {wanted[matched]!r}\n"
        f"does not match the output there: {[_show(line, 160) for line in near]}"
    )


def stream_problems(text: str) -> list[str]:
    """What is wrong with a gateway event stream (``id:``/``event:`` lines): ids must rise by
    one, a last event (``done``, ``error``, ``cancelled``) ends it, ``usage`` comes just
    before ``done``. Anything that is not such a stream has no problems."""
    events: list[tuple[int, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line:
            if "id" in current and "event" in current and current["id"].isdigit():
                events.append((int(current["id"]), current["event"]))
            current = {}
        elif ":" in line:
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    if not events:
        return []
    problems = []
    ids = [i for i, _ in events]
    if ids != list(range(ids[0], ids[0] + len(ids))):
        problems.append(f"event ids do not rise by one: {ids[:20]}")
    types = [t for _, t in events]
    terminal = [k for k, t in enumerate(types) if t in ("done", "error", "cancelled")]
    if terminal and terminal != [len(types) - 1]:
        problems.append(f"a last event is not last: {types[terminal[0]]} at id {ids[terminal[0]]}")
    if "usage" in types and types[-2:] != ["usage", "done"]:
        problems.append(f"usage is not just before done: {types[-3:]}")
    return problems


# ---- shell blocks ------------------------------------------------------------------------

# Every shell block runs in bash with this prelude. `make serve` and `ssegate serve` start the
# server in the background on the block's port (a later one replaces an earlier one, as Ctrl-C
# and a new command would) and return once it answers /healthz; any other make target is only
# dry-run (`make -n`): the test suite and the benchmarks can't run inside the test suite. curl
# notes the status it got, so that a 404 from a stale URL fails the block.
_PRELUDE = r"""
_docs_servers=()
_docs_stop_servers() {
  local pid
  for pid in "${_docs_servers[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${_docs_servers[@]}"; do
    local waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < 100)); do
      sleep 0.1
      waited=$((waited + 1))
    done
  done
  _docs_servers=()
}
_docs_serve() {
  _docs_stop_servers
  setsid "$@" >>"$DOCS_TEST_DIR/server.log" 2>&1 </dev/null &
  local pid=$! deadline=$((SECONDS + DOCS_TEST_SERVER_TIMEOUT))
  _docs_servers+=("$pid")
  echo "$pid" >>"$DOCS_TEST_DIR/server.pids"
  until command curl -sf -o /dev/null "http://127.0.0.1:$DOCS_TEST_PORT/healthz"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "docs-test: '$*' exited before it answered; its log ends:" >&2
      tail -n 15 "$DOCS_TEST_DIR/server.log" >&2
      return 1
    fi
    if (( SECONDS >= deadline )); then
      echo "docs-test: '$*' did not answer /healthz within ${DOCS_TEST_SERVER_TIMEOUT}s" >&2
      return 1
    fi
    sleep 0.1
  done
}
curl() {  # as it is, plus a note on stderr of the HTTP status it got
  command curl -w '%{stderr}\036docs-test-http %{http_code} %{url_effective}\n' "$@"
}
make() {  # as a reader runs it: not with the variables of a `make test` around the tests
  if [[ "${1:-}" == serve ]]; then
    _docs_serve env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u ARGS \
      make --no-print-directory -C "$DOCS_TEST_REPO" "$@" HOST=127.0.0.1 "PORT=$DOCS_TEST_PORT"
  else
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u ARGS \
      make --no-print-directory -C "$DOCS_TEST_REPO" -n "$@" >&2
  fi
}
ssegate() {
  if [[ "${1:-}" == serve ]]; then
    _docs_serve ssegate "$@" --host 127.0.0.1 --port "$DOCS_TEST_PORT"
  else
    command ssegate "$@"
  fi
}
_docs_save_state() {
  local name
  for name in $(compgen -v); do
    [[ " $_docs_vars_before " == *" $name "* || "$name" =~ ^(_docs|FUNCNAME$|BASH_) ]] ||
      declare -p "$name"
  done >"$DOCS_TEST_DIR/state.sh" 2>/dev/null || true
}
_docs_on_exit() { _docs_save_state; _docs_stop_servers; }
_docs_on_err() { printf '\036docs-test-error %s %s %s\n' "$1" "$2" "$3" >&2; }
_docs_vars_before=" $(compgen -v | tr '\n' ' ') "
if [[ -f "$DOCS_TEST_DIR/state.sh" ]]; then source "$DOCS_TEST_DIR/state.sh"; fi
trap _docs_on_exit EXIT
trap '_docs_on_err $LINENO $? "$BASH_COMMAND"' ERR
set -e -o pipefail
"""

_OUTPUT_COMMENT = re.compile(r"^\s*# (?=[\[{])")
_OUTPUT_CONTINUATION = re.compile(r"^\s*#  ")
_MARK = re.compile(r"\n?\x1edocs-test-mark (\d+)\x1e\n")


@dataclass
class ShellResult:
    """What a shell block did: its exit status, stdout split at each output comment, stderr."""

    returncode: int | None  # None: killed at the time limit
    outputs: list[str]  # outputs[k]: what the commands before output comment k printed
    rest: str  # what the commands after the last output comment printed
    stderr: str
    error_line: int | None = None  # the doc line of the command that failed
    http_errors: list[str] = field(default_factory=list)  # "404 URL" for each curl that got ≥ 400


@dataclass
class ShellScript:
    """A shell block with a marker printed before each output comment, and those comments."""

    text: str
    expected: list[tuple[int, str]] = field(default_factory=list)  # (doc line, sample)
    doc_lines: list[int] = field(default_factory=list)  # script line → doc line


def instrument(block_text: str, first_line: int) -> ShellScript:
    """Put a marker before every output comment (``# {…}``, continued by ``#  …`` lines)."""
    lines = block_text.splitlines()
    out: list[str] = []
    script = ShellScript("")
    k = 0
    while k < len(lines):
        line = lines[k]
        if _OUTPUT_COMMENT.match(line) and k > 0 and lines[k - 1].strip():
            start = k
            sample = [line.split("#", 1)[1]]
            while k + 1 < len(lines) and _OUTPUT_CONTINUATION.match(lines[k + 1]):
                k += 1
                sample.append(lines[k].split("#", 1)[1])
            out.append(rf"printf '\n\036docs-test-mark %d\036\n' {len(script.expected)}")
            script.doc_lines.append(first_line + start)
            script.expected.append((first_line + start, " ".join(sample)))
            out.extend(lines[start : k + 1])
            script.doc_lines.extend(first_line + j for j in range(start, k + 1))
        else:
            out.append(line)
            script.doc_lines.append(first_line + k)
        k += 1
    script.text = "\n".join(out) + "\n"
    return script


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_shell(
    script: ShellScript, workdir: Path, env: dict[str, str], timeout: float
) -> ShellResult:
    """Run an instrumented shell block with bash in ``workdir``; stop every server it started."""
    prelude_lines = _PRELUDE.count("\n")
    source = _PRELUDE + script.text
    pids = workdir / "server.pids"
    proc = subprocess.Popen(
        ["bash", "-c", source, "docs-test"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    returncode: int | None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        returncode = None
    finally:
        _kill_group(proc.pid)
        if pids.exists():
            for pid in pids.read_text().split():
                _kill_group(int(pid))
            pids.unlink()
    error_line = None
    for match in re.finditer(r"\x1edocs-test-error (\d+) \d+ ", stderr):
        index = int(match.group(1)) - prelude_lines - 1
        if 0 <= index < len(script.doc_lines):
            error_line = script.doc_lines[index]
    http_errors = [
        f"{m.group(1)} {m.group(2)}"
        for m in re.finditer(r"\x1edocs-test-http (\d+) (\S*)", stderr)
        if int(m.group(1)) >= 400
    ]
    stderr = re.sub(r"\x1edocs-test-(?:error|http) [^\n]*\n", "", stderr)
    pieces = _MARK.split(stdout)
    outputs = [pieces[k] for k in range(0, len(pieces) - 1, 2)]
    return ShellResult(returncode, outputs, pieces[-1], stderr, error_line, http_errors)
