"""Group commit for the Redis store's scripts: every write goes through one pipeline.

Each gateway write (``append``, ``finish``, ``create``, counting a subscriber in, …) is one Lua
script. Sent one per round trip, 100 producers appending as fast as their upstreams send need
100 pooled connections at once: the pool ran dry (``No connection available``) and every token
paid a round trip of its own. Instead, callers queue their calls here and a single writer
sends whatever is queued as one pipeline on one connection, waits for the replies, and hands
each caller its own reply (or error). While a batch is in flight the next one gathers, so the
batch grows with the load and the round trips per call shrink.

Appends to the same stream in one batch are coalesced into one script call that adds them in
queue order with consecutive ids (``HINCRBY last_id n``), so a stream costs one script call per
round trip however many producers append to it. Order and ids are as if the calls ran one by
one: a caller's reply comes only after Redis ran its script, so a producer that awaits each
append still sees ids ``1, 2, 3, …``.

A call cancelled before its batch is sent is dropped; one cancelled after is not undone (as
with any command already on the wire). ``redis`` exceptions never leave this module: replies
and failures are mapped by the hub's ``translate``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection as Connection

from ._errors import StoreError, StoreUnavailableError

__all__ = ["Command", "ScriptWriter", "untimed"]

log = logging.getLogger("ssegate.store.redis")

#: At most this many script calls go out in one pipeline, and at most this many queued calls
#: in all (appends to one stream are one script call): bounds the request and its replies.
MAX_BATCH = 512
MAX_CALLS = 4096


class _Call:
    """One queued script call and, once its batch is back, its reply or error: set on the
    call, then either its ``done`` event is set (a caller awaits it) or it goes to its
    ``owner`` with the other calls of its batch that the owner queued (a call nobody awaits:
    :meth:`ScriptWriter.append_nowait`)."""

    __slots__ = (
        "args",
        "context",
        "done",
        "dropped",
        "error",
        "event",
        "keys",
        "name",
        "owner",
        "result",
        "sent",
    )

    def __init__(
        self,
        name: str,
        keys: list[bytes],
        args: list[Any],
        event: tuple[str, str] | None,
        owner: AppendOwner | None = None,
        context: Any = None,
    ) -> None:
        self.name = name
        self.keys = keys
        self.args = args
        self.event = event  # (type, data) for an append, coalesced with its stream's others
        self.owner = owner
        self.context = context  # the owner's, for its own use
        self.done = anyio.Event() if owner is None else None
        self.sent = False
        self.dropped = False  # its waiter left before it was sent
        self.result: Any = None
        self.error: StoreError | None = None


class AppendOwner(Protocol):
    """Who queued appends nobody awaits: told of each batch's outcome for them, in order."""

    def appended(self, calls: list[_Call]) -> None: ...


def _complete(calls: list[_Call]) -> None:
    """Hand each call its outcome (``result`` or ``error``, set before): an owner gets its
    calls together, in queue order; an awaited call's ``done`` is set."""
    owned: dict[int, list[_Call]] = {}
    for call in calls:
        if call.owner is not None:
            owned.setdefault(id(call.owner), []).append(call)
        elif call.done is not None:
            call.done.set()
    for group in owned.values():
        owner = group[0].owner
        for call in group:
            call.owner = None  # once
        assert owner is not None
        owner.appended(group)


class Command:
    """One script call in a pipeline: a plain call, or the appends of one stream."""

    __slots__ = ("args", "calls", "keys", "name")

    def __init__(self, call: _Call) -> None:
        self.name = call.name
        self.keys = call.keys
        self.args = list(call.args)
        self.calls = [call]
        if call.event is not None:
            self.args += call.event


class ScriptWriter:
    """Queue script calls and send them in batches, one pipeline at a time (see the module
    docstring). :meth:`run` is the writer; it runs in the store's task group."""

    def __init__(
        self,
        client: Callable[[], Redis | RedisCluster],
        scripts: dict[str, Any],
        translate: Callable[[], AbstractContextManager[None]],
        *,
        timeout: float,
    ) -> None:
        self._client = client
        self._timeout = timeout  # for one batch: sending it and reading every reply
        self._held: dict[str, Connection] = {}  # a server's name -> see _connection
        self._batch: list[_Call] = []  # the batch in flight
        self._batch_started: float | None = None  # when it was sent (time.monotonic())
        self._scope: anyio.CancelScope | None = None  # around the batches: see _watchdog
        self._scripts = scripts  # name -> redis-py Script (its sha and source)
        self._translate = translate
        self._queue: deque[_Call] = deque()
        self._ready = anyio.Event()
        self._stopped: StoreError | None = None
        self._sending = False
        self._idle: anyio.Event | None = None  # set when nothing is queued or in flight
        self.batches = 0  # pipelines sent (for tests and statistics)

    async def call(self, name: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run script ``name`` in the next batch and return its reply."""
        return await self._submit(_Call(name, keys, args, None))

    async def call_many(self, calls: list[tuple[str, list[bytes], list[Any]]]) -> list[Any]:
        """Run several scripts, ``(name, keys, args)`` each, in the next batches; returns each
        one's reply or its :class:`StoreError`, in order (it raises only the writer's own
        error, once it has stopped)."""
        queued = [_Call(name, keys, args, None) for name, keys, args in calls]
        await self._run_calls(queued)
        return [call.error if call.error is not None else call.result for call in queued]

    async def append(self, keys: list[bytes], args: list[Any], event: str, data: str) -> int:
        """Append one event with the ``append`` script (``args`` without the event); returns
        its id, or the script's negative status code."""
        result = int(await self._submit(_Call("append", keys, args, (event, data))))
        return result

    def append_nowait(
        self,
        keys: list[bytes],
        args: list[Any],
        event: str,
        data: str,
        owner: AppendOwner,
        context: Any,
    ) -> None:
        """Queue an append that nobody awaits: once its batch is back, ``owner.appended``
        gets it (``result``: the id or a negative status; or ``error``; ``context`` as given)
        with the owner's other calls of that batch, in queue order. Raises the writer's error
        at once if it has stopped."""
        if self._stopped is not None:
            raise self._stopped
        self._queue.append(_Call("append", keys, args, (event, data), owner, context))
        self._ready.set()

    async def _submit(self, call: _Call) -> Any:
        await self._run_calls([call])
        if call.error is not None:
            raise call.error
        return call.result

    async def _run_calls(self, calls: list[_Call]) -> None:
        """Queue ``calls`` and wait until each has its outcome; cancelled, drop those not on
        the wire yet."""
        if self._stopped is not None:
            raise self._stopped
        self._queue.extend(calls)
        self._ready.set()
        try:
            for call in calls:
                assert call.done is not None
                await call.done.wait()
        except BaseException:
            for call in calls:
                call.dropped = not call.sent  # run() skips it when it comes to it
            raise

    async def drained(self) -> None:
        """Until nothing is queued or in flight (or the writer has stopped)."""
        while (self._queue or self._sending) and self._stopped is None:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def _wake_idle(self) -> None:
        if self._idle is not None:
            self._idle.set()
            self._idle = None

    def stop(self, error: StoreError) -> None:
        """Fail every queued call (and any later one) with ``error``."""
        if self._stopped is None:
            self._stopped = error
        self._wake_idle()
        failed = list(self._queue)
        self._queue.clear()
        for call in failed:
            call.error = error
        _complete(failed)

    async def run(self) -> None:
        """Send what is queued, batch after batch, until cancelled (then fail what is left).
        A batch unanswered after ``timeout`` seconds is abandoned by the watchdog: its calls
        fail with ``StoreUnavailableError`` and the next batch goes out on a new connection."""
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watchdog)
                while True:
                    with anyio.CancelScope() as self._scope:
                        await self._send_batches()
                    # The watchdog cancelled the batch in flight (its connection is dropped).
                    batch, self._batch = self._batch, []
                    self._sending = False
                    error = StoreUnavailableError(
                        f"Redis did not answer within {self._timeout:g} s"
                    )
                    log.warning("redis writer: %s", error)
                    for call in batch:
                        call.error = error
                    _complete(batch)
        finally:
            with anyio.CancelScope(shield=True):
                await self._drop_connection()
            self._wake_idle()
            closed = StoreUnavailableError("the store is closed")
            left = [
                c for c in self._batch if c.owner is not None or (c.done and not c.done.is_set())
            ]
            self._batch = []
            for call in left:
                call.error = closed
            _complete(left)
            self.stop(closed)

    async def _send_batches(self) -> None:
        while True:
            while not self._queue:
                self._wake_idle()
                if self._ready.is_set():
                    self._ready = anyio.Event()
                await self._ready.wait()
            batch: list[_Call] = []
            commands = 0
            streams: set[bytes] = set()  # appended to in this batch: one command each
            while self._queue and len(batch) < MAX_CALLS:
                call = self._queue[0]
                if call.dropped:
                    self._queue.popleft()
                    continue
                if call.event is None or call.keys[1] not in streams:
                    if commands == MAX_BATCH:
                        break
                    commands += 1
                    if call.event is not None:
                        streams.add(call.keys[1])
                self._queue.popleft()
                call.sent = True
                batch.append(call)
            self._batch = batch
            self._batch_started = time.monotonic()
            self._sending = True
            try:
                await self._send(batch)
            finally:
                self._sending = False
            self._batch = []
            self._batch_started = None

    async def _watchdog(self) -> None:
        """Cancel the batch in flight once it is ``timeout`` seconds old: one timer for the
        writer, not one per batch (or per reply, as redis-py's socket timeout would)."""
        while True:
            await anyio.sleep(self._timeout / 4)
            started = self._batch_started
            if started is not None and time.monotonic() - started >= self._timeout:
                self._batch_started = None
                if self._scope is not None:
                    self._scope.cancel()

    # -- one batch -----------------------------------------------------------------------

    async def _send(self, batch: list[_Call]) -> None:
        commands: list[Command] = []
        streams: dict[bytes, Command] = {}  # events key -> that stream's append command
        for call in batch:
            if call.event is not None:
                command = streams.get(call.keys[1])
                if command is not None:
                    command.args += call.event
                    command.calls.append(call)
                    continue
                command = Command(call)
                streams[call.keys[1]] = command
            else:
                command = Command(call)
            commands.append(command)
        answered = False
        try:
            replies = await self._pipeline(commands)
            missing = [c for c, r in zip(commands, replies, strict=True) if _no_script(r)]
            if missing:
                # Redis lost its scripts (a restart or SCRIPT FLUSH): load them and send
                # these again; a NOSCRIPT reply means the call did not run.
                client = self._client()
                for name in {c.name for c in missing}:
                    await client.script_load(self._scripts[name].script)
                again = iter(await self._pipeline(missing))
                replies = [next(again) if _no_script(r) else r for r in replies]
            for command, reply in zip(commands, replies, strict=True):
                self._resolve(command, reply)
            answered = True
        except StoreError as exc:
            for call in batch:
                call.error = exc
            answered = True
        except (redis_errors.RedisError, OSError, redis_errors.RedisClusterException) as exc:
            error = self._error_of(exc)
            for call in batch:
                call.error = error
            answered = True
        finally:
            self.batches += 1
            if answered:  # else cancelled (the store closes): run() fails the batch
                _complete(batch)

    async def _pipeline(self, commands: list[Command]) -> list[Any]:
        client = self._client()
        assert isinstance(client, Redis)  # a cluster's writer sends its own way
        pool = client.connection_pool
        return await self._round_trip(
            "", lambda: untimed(pool.connection_class, pool.connection_kwargs), commands
        )

    async def _round_trip(
        self, key: str, make: Callable[[], Any], commands: list[Command]
    ) -> list[Any]:
        """Send ``commands`` as one pipeline on the writer's own connection ``key`` (made
        by ``make`` on first use and after a failure) and read their replies; a reply that is
        an error is returned, not raised."""
        # A pipeline by hand: redis-py's packs every argument through its generic encoder,
        # which was a quarter of the CPU an append cost; the calls here are all EVALSHA.
        payload = b"".join(
            _pack(
                [
                    b"EVALSHA",
                    self._scripts[command.name].sha,
                    len(command.keys),
                    *command.keys,
                    *command.args,
                ]
            )
            for command in commands
        )
        for attempt in (0, 1):
            connection = await self._connection(key, make)
            try:
                try:
                    await connection.send_packed_command(payload, check_health=False)
                except (redis_errors.ConnectionError, OSError):
                    # Nothing was sent: safe to try once more, on a fresh connection (the
                    # old one made stale by a Redis restart).
                    await self._drop_connection(key)
                    if attempt:
                        raise
                    continue
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except redis_errors.ResponseError as exc:
                        replies.append(exc)
                return replies
            except BaseException:
                # Replies may be left unread: the connection is out of step, never reuse it.
                with anyio.CancelScope(shield=True):
                    await self._drop_connection(key)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connection(self, key: str, make: Callable[[], Any]) -> Connection:
        """The writer's own connection ``key`` (one server's): outside the command pool, so
        a batch takes no pool lock, and without a socket timeout, which redis-py would arm
        and disarm around every reply (the watchdog bounds a whole batch, see :meth:`run`)."""
        connection = self._held.get(key)
        if connection is None:
            connection = make()
            assert isinstance(connection, Connection)
            await connection.connect()  # type: ignore[no-untyped-call]
            self._held[key] = connection
        return connection

    async def _drop_connection(self, key: str | None = None) -> None:
        """Close the writer's connection ``key`` (all of them if ``None``)."""
        keys = list(self._held) if key is None else [key]
        for name in keys:
            connection = self._held.pop(name, None)
            if connection is not None:
                await connection.disconnect()

    def _resolve(self, command: Command, reply: Any) -> None:
        if isinstance(reply, Exception):
            error = self._error_of(reply)
            for call in command.calls:
                call.error = error
            return
        if command.calls[0].event is None:
            command.calls[0].result = reply
            return
        first = int(reply)
        for offset, call in enumerate(command.calls):
            # A negative status (no such stream, finished) applies to every coalesced call.
            call.result = first if first < 0 else first + offset

    def _error_of(self, exc: BaseException) -> StoreError:
        try:
            with self._translate():
                raise exc
        except StoreError as error:
            return error
        return StoreUnavailableError(f"Redis is unavailable: {exc}")  # pragma: no cover


def untimed(connection_class: type[Any], kwargs: dict[str, Any]) -> Any:
    """A new connection of ``connection_class`` made with ``kwargs`` (a pool's or a cluster
    node's), but without a socket timeout: for the writer (see ``ScriptWriter._connection``)."""
    return connection_class(**{**kwargs, "socket_timeout": None})


def _pack(parts: list[Any]) -> bytes:
    """One command in RESP: an array of bulk strings (``bytes``, ``str`` or ``int`` parts)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _no_script(reply: Any) -> bool:
    return isinstance(reply, redis_errors.NoScriptError)
