"""``/metrics``: the gateway's Prometheus series, and the store wrapper that feeds some of them.

Each app has its own :class:`prometheus_client.CollectorRegistry` (no global state, so tests
and several apps in one process don't collide). Every series is per instance; sum over
instances in Prometheus.

================================================  ============================================
series                                            what
================================================  ============================================
``ssegate_streams_active``                        generations running in this instance
``ssegate_subscribers_active``                    SSE subscribers connected to this instance
``ssegate_streams_started_total{provider,model}`` generations started here
``ssegate_streams_finished_total{status}``        ... by final status (done, error, cancelled)
``ssegate_time_to_first_token_seconds``           start to first delta, ``{provider,model}``
``ssegate_tokens_per_second``                     output tokens per second after the first,
                                                  ``{provider,model}`` (the upstream's
                                                  ``completion_tokens`` when reported, else
                                                  the number of deltas)
``ssegate_upstream_errors_total{code}``           generations ended by an upstream error
``ssegate_stream_errors_total{code}``             every ``error`` end, ours included
                                                  (``timeout``, ``internal``, ``store_*``)
``ssegate_cancels_total{cause}``                  cancelled generations by cause
``ssegate_producer_lost_total``                   streams this instance found producer-less
                                                  and ended with ``producer_lost``
``ssegate_store_operation_seconds{operation}``    store call latency (Redis round trips)
``ssegate_store_errors_total{operation,code}``    store calls that failed
================================================  ============================================

:class:`MeteredStore` wraps the gateway's store: it times each operation, and it turns a lost
producer into the stream's recorded last event — a follower whose store reports
:class:`~ssegate.store.ProducerLostError` (the producing instance died: its lease expired) ends
the stream with ``error`` ``{"code": "producer_lost", "retryable": true}`` through
:meth:`Store.finish`, which is atomic, so exactly one terminal event exists however many
followers notice at once, and every follower (and a later resume) gets it with its id.

A follower whose store becomes unreachable (Redis down) gets :class:`ProducerLostError` with
``code="store_unavailable"``: the producer can't store events either, so its generation ends,
and the event routes turn that error into a retryable ``error`` event rather than a cut
connection.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Self

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from .._errors import SsegateError
from .._jobs import JobObserver
from ..store import (
    FOLLOW_BATCH,
    IllegalTransitionError,
    ProducerLostError,
    Store,
    StoredEvent,
    StoreError,
    StoreStatistics,
    StoreUnavailableError,
    StreamInfo,
    StreamStatus,
)

__all__ = ["PRODUCER_LOST", "GatewayMetrics", "MeteredStore"]

log = logging.getLogger("ssegate.gateway")

#: The ``error`` event a lost producer's stream ends with.
PRODUCER_LOST: dict[str, Any] = {
    "code": "producer_lost",
    "message": "the instance generating this stream stopped; start the request again",
    "retryable": True,
}

# Error codes a job produces itself; any other error code came from the upstream.
_OWN_ERROR_CODES = frozenset(
    {
        "timeout",
        "internal",
        "store_error",
        "store_unavailable",
        "store_full",
        "not_found",
        "gap",
        "producer_lost",
        "illegal_transition",
        "shutting_down",
    }
)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
_RATE_BUCKETS = (1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class StoreTimings:
    """A histogram of store operation latencies, by ``operation``: a Prometheus collector.

    ``prometheus_client.Histogram`` takes two locks per observation, and the store is timed
    once per delta; these are plain counters, updated from the event loop only (a scrape
    from another thread may see an observation half counted, never a corrupt value). The
    exposition is the same as the ``Histogram``'s, without the ``_created`` series.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(buckets))
        # Per operation: a count per bucket (+Inf last), and the sum.
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, operation: str, seconds: float) -> None:
        """Count one ``operation`` that took ``seconds``."""
        counts = self._counts.get(operation)
        if counts is None:
            counts = self._counts[operation] = [0] * (len(self.bounds) + 1)
            self._sums[operation] = 0.0
        counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self._sums[operation] += seconds

    def describe(self) -> list[Metric]:
        """The family, without samples (for the registry's name check)."""
        return [HistogramMetricFamily(self.name, self.documentation, labels=["operation"])]

    def collect(self) -> list[Metric]:
        """The family with a cumulative histogram per operation seen so far."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=["operation"])
        for operation, counts in list(self._counts.items()):
            cumulative, total = [], 0
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                total += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
            family.add_metric([operation], cumulative, self._sums[operation])
        return [family]


class GatewayMetrics(JobObserver):
    """The gateway's series in one registry; also the :class:`JobObserver` that feeds them."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._active: Callable[[], int] = lambda: 0
        self._statistics: Callable[[], StoreStatistics] | None = None
        self.streams_active = Gauge(
            "ssegate_streams_active", "Generations running in this instance.", registry=registry
        )
        self.streams_active.set_function(lambda: self._active())
        self.subscribers_active = Gauge(
            "ssegate_subscribers_active",
            "SSE subscribers connected to this instance.",
            registry=registry,
        )
        self.subscribers_active.set_function(self._subscribers)
        self.started = Counter(
            "ssegate_streams_started",
            "Generations started in this instance.",
            ["provider", "model"],
            registry=registry,
        )
        self.finished = Counter(
            "ssegate_streams_finished",
            "Generations ended in this instance, by final status.",
            ["status"],
            registry=registry,
        )
        for status in ("done", "error", "cancelled"):
            self.finished.labels(status)
        self.first_token = Histogram(
            "ssegate_time_to_first_token_seconds",
            "Seconds from the start of a generation to its first delta.",
            ["provider", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            "ssegate_tokens_per_second",
            "Output tokens per second of a generation, after its first token.",
            ["provider", "model"],
            buckets=_RATE_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "ssegate_upstream_errors",
            "Generations ended by an upstream error, by error code.",
            ["code"],
            registry=registry,
        )
        self.stream_errors = Counter(
            "ssegate_stream_errors",
            "Generations ended with an error event, by error code.",
            ["code"],
            registry=registry,
        )
        self.cancels = Counter(
            "ssegate_cancels",
            "Cancelled generations, by cause.",
            ["cause"],
            registry=registry,
        )
        self.producer_lost = Counter(
            "ssegate_producer_lost",
            "Streams found without a live producer and ended with producer_lost.",
            registry=registry,
        )
        self.store_seconds = StoreTimings(
            "ssegate_store_operation_seconds",
            "Latency of stream store operations.",
            _STORE_BUCKETS,
        )
        registry.register(self.store_seconds)
        self.store_errors = Counter(
            "ssegate_store_errors",
            "Stream store operations that failed, by error code.",
            ["operation", "code"],
            registry=registry,
        )
        # Per running stream: (provider, model), first-token latency, deltas and their span.
        self._labels: dict[str, tuple[str, str]] = {}
        self._generated: dict[str, tuple[int, float]] = {}

    def bind(self, *, active: Callable[[], int], statistics: Callable[[], StoreStatistics]) -> None:
        """Read the active-stream and subscriber gauges from these at scrape time."""
        self._active = active
        self._statistics = statistics

    def _subscribers(self) -> float:
        return float(self._statistics().subscribers) if self._statistics is not None else 0.0

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type for an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    @contextmanager
    def time_store(self, operation: str) -> Iterator[None]:
        """Time one store operation; count it as failed if it raises a store error."""
        started = time.perf_counter()
        try:
            yield
        except SsegateError as exc:
            self.store_errors.labels(operation, exc.code).inc()
            raise
        finally:
            self.store_seconds.observe(operation, time.perf_counter() - started)

    # -- JobObserver -----------------------------------------------------------------------

    def on_start(self, info: StreamInfo) -> None:
        """Count the start; remember the stream's labels."""
        labels = (info.provider, info.model)
        self._labels[info.id] = labels
        self.started.labels(*labels).inc()

    def on_first_token(self, stream_id: str, latency: float) -> None:
        """Observe the time to first token."""
        labels = self._labels.get(stream_id)
        if labels is not None:
            self.first_token.labels(*labels).observe(latency)

    def on_generated(self, stream_id: str, deltas: int, seconds: float) -> None:
        """Keep the delta count and span until the usage is known (``on_finish``)."""
        self._generated[stream_id] = (deltas, seconds)

    def on_error(self, stream_id: str, error: dict[str, Any]) -> None:
        """Count the error by code; upstream ones also in ``upstream_errors``."""
        code = str(error.get("code") or "unknown")
        self.stream_errors.labels(code).inc()
        if code not in _OWN_ERROR_CODES:
            self.upstream_errors.labels(code).inc()

    def on_finish(
        self,
        stream_id: str,
        status: StreamStatus,
        cause: str | None,
        duration: float,
        usage: dict[str, Any] | None,
    ) -> None:
        """Count the final status and cancel cause; observe the token rate."""
        labels = self._labels.pop(stream_id, None)
        generated = self._generated.pop(stream_id, None)
        self.finished.labels(status.value).inc()
        if status is StreamStatus.CANCELLED:
            self.cancels.labels(cause or "unknown").inc()
        if labels is None or generated is None:
            return
        deltas, seconds = generated
        tokens = deltas
        if usage is not None and isinstance(usage.get("completion_tokens"), int):
            tokens = usage["completion_tokens"]
        if tokens > 1 and seconds > 0:
            self.tokens_per_second.labels(*labels).observe((tokens - 1) / seconds)


class MeteredStore(Store):
    """A store that times ``inner``'s operations into ``metrics`` and ends producer-less
    streams with ``producer_lost`` (see the module docstring). Entering it enters ``inner``."""

    def __init__(self, inner: Store, metrics: GatewayMetrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.lease_ttl = inner.lease_ttl
        self._observe = metrics.store_seconds.observe

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def create(
        self, stream_id: str, *, model: str, provider: str, owner: str | None = None
    ) -> StreamInfo:
        """See :meth:`Store.create`."""
        with self.metrics.time_store("create"):
            return await self.inner.create(stream_id, model=model, provider=provider, owner=owner)

    async def append(self, stream_id: str, event: str, data: str) -> StoredEvent:
        """See :meth:`Store.append`."""
        # The hot path (once per delta): timed inline, into the histogram's child for
        # "append" looked up once, rather than through time_store().
        started = time.perf_counter()
        try:
            return await self.inner.append(stream_id, event, data)
        except SsegateError as exc:
            self.metrics.store_errors.labels("append", exc.code).inc()
            raise
        finally:
            self._observe("append", time.perf_counter() - started)

    async def finish(
        self,
        stream_id: str,
        status: StreamStatus,
        data: str,
        *,
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        cause: str | None = None,
    ) -> StoredEvent:
        """See :meth:`Store.finish`."""
        with self.metrics.time_store("finish"):
            return await self.inner.finish(
                stream_id, status, data, usage=usage, error=error, cause=cause
            )

    async def get(self, stream_id: str) -> StreamInfo:
        """See :meth:`Store.get`."""
        with self.metrics.time_store("get"):
            return await self.inner.get(stream_id)

    async def read(
        self, stream_id: str, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """See :meth:`Store.read`."""
        with self.metrics.time_store("read"):
            return await self.inner.read(stream_id, after, limit)

    async def follow_batches(
        self, stream_id: str, after: int = 0, limit: int = FOLLOW_BATCH
    ) -> AsyncGenerator[list[StoredEvent], None]:
        """See :meth:`Store.follow_batches`; a lost producer ends the stream with
        ``producer_lost``."""
        last = after
        for _ in range(3):  # a lease renewed in the nick of time is followed on; not forever
            try:
                async with aclosing(self.inner.follow_batches(stream_id, last, limit)) as batches:
                    async for batch in batches:
                        last = batch[-1].id
                        yield batch
                return
            except ProducerLostError:
                if not await self._end_producer_lost(stream_id):
                    raise
            except StoreUnavailableError as exc:
                # The producer can't store events either, so the generation is over: say so
                # as a lost producer (which every route reports as a retryable ``error``
                # event), keeping the real code for routes that report ``exc.code``. The
                # details (Redis's address) go to the log, not to the client.
                log.warning("stream %s: follower stopped: %s", stream_id, exc.message)
                raise ProducerLostError(
                    "the stream store is unavailable, so this generation stopped; "
                    "try again in a moment",
                    code=exc.code,
                    retryable=True,
                ) from None
        raise ProducerLostError("the stream's producer stopped renewing its lease")

    async def _end_producer_lost(self, stream_id: str) -> bool:
        """Record ``producer_lost`` as the stream's end; ``False`` if the store failed."""
        data = orjson.dumps(PRODUCER_LOST).decode()
        try:
            if await self.producer_alive(stream_id):
                return True  # renewed after all: follow on
            await self.finish(
                stream_id, StreamStatus.ERROR, data, error=PRODUCER_LOST, cause="producer_lost"
            )
        except IllegalTransitionError:
            return True  # another follower, or the producer, ended it first: follow to its end
        except StoreError as exc:
            log.warning("stream %s: producer lost, and its end not recorded: %s", stream_id, exc)
            return False
        log.warning("stream %s: its producer stopped; ended it with producer_lost", stream_id)
        self.metrics.producer_lost.inc()
        return True

    async def request_cancel(self, stream_id: str, cause: str = "client") -> bool:
        """See :meth:`Store.request_cancel`."""
        with self.metrics.time_store("request_cancel"):
            return await self.inner.request_cancel(stream_id, cause)

    async def wait_cancel(self, stream_id: str) -> str:
        """See :meth:`Store.wait_cancel` (a wait: not timed)."""
        return await self.inner.wait_cancel(stream_id)

    @asynccontextmanager
    async def subscriber(self, stream_id: str) -> AsyncIterator[None]:
        """See :meth:`Store.subscriber`."""
        async with AsyncExitStack() as stack:
            with self.metrics.time_store("subscribe"):
                await stack.enter_async_context(self.inner.subscriber(stream_id))
            yield

    async def wait_abandoned(self, stream_id: str, grace: float) -> None:
        """See :meth:`Store.wait_abandoned` (a wait: not timed)."""
        await self.inner.wait_abandoned(stream_id, grace)

    async def renew_lease(self, stream_id: str) -> None:
        """See :meth:`Store.renew_lease`."""
        with self.metrics.time_store("renew_lease"):
            await self.inner.renew_lease(stream_id)

    async def producer_alive(self, stream_id: str) -> bool:
        """See :meth:`Store.producer_alive`."""
        with self.metrics.time_store("producer_alive"):
            return await self.inner.producer_alive(stream_id)

    async def delete(self, stream_id: str) -> bool:
        """See :meth:`Store.delete`."""
        with self.metrics.time_store("delete"):
            return await self.inner.delete(stream_id)

    async def aclose(self) -> None:
        """See :meth:`Store.aclose`."""
        await self.inner.aclose()

    def statistics(self) -> StoreStatistics:
        """See :meth:`Store.statistics`."""
        return self.inner.statistics()

    async def set_alias(self, alias: str, stream_id: str, *, ttl: float) -> str | None:
        """See :meth:`Store.set_alias`."""
        with self.metrics.time_store("set_alias"):
            return await self.inner.set_alias(alias, stream_id, ttl=ttl)

    async def get_alias(self, alias: str) -> str | None:
        """See :meth:`Store.get_alias`."""
        with self.metrics.time_store("get_alias"):
            return await self.inner.get_alias(alias)
