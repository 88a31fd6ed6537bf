"""Per-key usage limits: the request rate (a token bucket per identity) and running streams.

=========================  ======  ==================================  =========================
limit                      status  code                                option
=========================  ======  ==================================  =========================
requests per second / key  429     ``rate_limited`` + ``Retry-After``  ``--rate-limit``,
(and / stream, read token)                                             ``--rate-burst``
running streams / key      429     ``too_many_streams`` + Retry-After  ``--max-streams-per-key``
=========================  ======  ==================================  =========================

Both hold per process: with several instances behind a load balancer, a key may run
``--max-streams-per-key`` streams and make ``--rate-limit`` requests per second on *each*.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .._jobs import JobObserver
from ..store import StreamInfo, StreamStatus
from ._errors import ApiError

__all__ = ["RateLimiter", "StreamQuota"]


class RateLimiter:
    """A token bucket per identity: ``rate`` requests per second, bursts of up to ``burst``.

    Memory is bounded: at most ``max_identities`` buckets are kept, the least recently used
    one is dropped first (a dropped bucket comes back full, which only errs on the lenient
    side, and only for an identity idle longer than every other).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_identities: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be a positive number of requests per second")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._max = max_identities
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, identity: str) -> float:
        """Take one request from ``identity``'s bucket: ``0.0`` if allowed, else the seconds
        until the next request would be."""
        now = self._clock()
        tokens, last = self._buckets.pop(identity, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[identity] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


class StreamQuota(JobObserver):
    """Counts running streams per owner (a :class:`JobObserver` of the job manager) and
    refuses a new one past ``limit`` (0: no limit) with 429."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._owners: dict[str, str] = {}

    def running(self, owner: str) -> int:
        """How many streams ``owner`` runs in this process."""
        return self._running[owner]

    @contextmanager
    def reserve(self, owner: str | None) -> Iterator[None]:
        """Hold a place for one more stream of ``owner`` while it is being started.

        Raises :class:`ApiError` 429 when the owner is at the limit. Streams being started
        count too, so concurrent requests can't all pass the check before any has started.
        """
        if owner is None or not self.limit:
            yield
            return
        if self._running[owner] + self._pending[owner] >= self.limit:
            raise ApiError(
                429,
                "too_many_streams",
                f"this key already runs {self.limit} streams, the most it may; "
                "wait for one to finish or cancel one",
                headers={"Retry-After": "5"},
            )
        self._pending[owner] += 1
        try:
            yield
        finally:
            self._pending[owner] -= 1
            if not self._pending[owner]:
                del self._pending[owner]

    def on_start(self, info: StreamInfo) -> None:
        if info.owner is not None:
            self._owners[info.id] = info.owner
            self._running[info.owner] += 1

    def on_finish(
        self,
        stream_id: str,
        status: StreamStatus,
        cause: str | None,
        duration: float,
        usage: dict[str, Any] | None,
    ) -> None:
        owner = self._owners.pop(stream_id, None)
        if owner is not None:
            self._running[owner] -= 1
            if self._running[owner] <= 0:
                del self._running[owner]
