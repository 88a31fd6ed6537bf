"""``/metrics``: the Prometheus series after a known workload, over a real gateway."""

from __future__ import annotations

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_helpers import ask, collect, running_gateway, sse_events

pytestmark = pytest.mark.anyio

SSE = {"Accept": "text/event-stream"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    all_samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return all_samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


async def test_metrics_after_a_known_workload() -> None:
    with running_gateway() as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            # Two complete streams of 5 tokens.
            for _ in range(2):
                async with client.stream(
                    "POST", "/v1/streams", json=ask("[[tokens:5]] [[interval_ms:5]]"), headers=SSE
                ) as response:
                    assert [e.event for e in await collect(response)][-1] == "done"
            # One upstream error (503 from the LLM).
            async with client.stream(
                "POST", "/v1/streams", json=ask("[[fault:http_503]]"), headers=SSE
            ) as response:
                assert [e.event for e in await collect(response)][-1] == "error"
            # One stream cancelled by the client after 3 deltas; while it runs and is
            # followed, the gauges show one stream and one subscriber.
            async with client.stream(
                "POST",
                "/v1/streams",
                json=ask("[[tokens:2000]] [[interval_ms:10]]"),
                headers=SSE,
            ) as response:
                stream_id = response.headers["x-ssegate-stream-id"]
                deltas = 0
                async for event in sse_events(response):
                    deltas += event.event == "delta"
                    if event.event == "delta" and deltas == 3:
                        live = await scrape(client)
                        assert value(live, "ssegate_streams_active") == 1
                        assert value(live, "ssegate_subscribers_active") == 1
                        assert (await client.delete(f"/v1/streams/{stream_id}")).status_code == 200
            # The job's observer runs just after the terminal event is stored.
            with anyio.fail_after(5):
                while value(await scrape(client), "ssegate_streams_active"):
                    await anyio.sleep(0.02)
            m = await scrape(client)

    started = value(m, "ssegate_streams_started_total", provider="openai", model="mock")
    assert started == 4
    assert value(m, "ssegate_streams_finished_total", status="done") == 2
    assert value(m, "ssegate_streams_finished_total", status="error") == 1
    assert value(m, "ssegate_streams_finished_total", status="cancelled") == 1
    assert value(m, "ssegate_cancels_total", cause="client") == 1
    assert value(m, "ssegate_upstream_errors_total", code="upstream_unavailable") == 1
    assert value(m, "ssegate_stream_errors_total", code="upstream_unavailable") == 1
    assert value(m, "ssegate_streams_active") == 0
    assert value(m, "ssegate_subscribers_active") == 0
    labels = {"provider": "openai", "model": "mock"}
    # Three streams got tokens (the failed one got none).
    assert value(m, "ssegate_time_to_first_token_seconds_count", **labels) == 3
    ttft = value(m, "ssegate_time_to_first_token_seconds_sum", **labels)
    assert 0 < ttft < 3
    assert value(m, "ssegate_tokens_per_second_count", **labels) == 3
    # 5 tokens 5 ms apart: (5 - 1) / ~0.02 s, about 200/s; the 10 ms stream about 100/s.
    rate_sum = value(m, "ssegate_tokens_per_second_sum", **labels)
    assert 150 < rate_sum < 3 * 400
    # Store latency: one create and one finish per stream, appends for every event.
    assert value(m, "ssegate_store_operation_seconds_count", operation="create") == 4
    assert value(m, "ssegate_store_operation_seconds_count", operation="finish") == 4
    assert value(m, "ssegate_store_operation_seconds_count", operation="append") >= 4 + 2 * 6
    assert value(m, "ssegate_store_operation_seconds_sum", operation="append") > 0


async def test_each_app_has_its_own_registry_and_openmetrics_is_negotiated() -> None:
    with running_gateway() as first, running_gateway() as second:
        async with httpx.AsyncClient(timeout=10) as client:
            created = await client.post(first.url + "/v1/streams", json=ask("[[tokens:2]]"))
            assert created.status_code == 201
            one = samples((await client.get(first.url + "/metrics")).text)
            two = samples((await client.get(second.url + "/metrics")).text)
            openmetrics = await client.get(
                second.url + "/metrics", headers={"Accept": "application/openmetrics-text"}
            )
    labels = {"provider": "openai", "model": "mock"}
    assert value(one, "ssegate_streams_started_total", **labels) == 1
    assert value(two, "ssegate_streams_started_total", **labels) == 0
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_store_timings_expose_what_a_prometheus_histogram_does() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from ssegate.gateway._metrics import _STORE_BUCKETS, StoreTimings

    name, doc = "ssegate_store_operation_seconds", "Latency of stream store operations."
    reference = CollectorRegistry()
    histogram = Histogram(name, doc, ["operation"], buckets=_STORE_BUCKETS, registry=reference)
    ours = CollectorRegistry(auto_describe=True)
    timings = StoreTimings(name, doc, _STORE_BUCKETS)
    ours.register(timings)
    for operation, seconds in [("append", 0.0005), ("append", 3e-4), ("append", 7.0), ("get", 1)]:
        histogram.labels(operation).observe(seconds)
        timings.observe(operation, seconds)
    want = [
        line for line in generate_latest(reference).decode().splitlines() if "_created" not in line
    ]
    assert generate_latest(ours).decode().splitlines() == want
