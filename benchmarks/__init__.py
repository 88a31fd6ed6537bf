"""ssegate's benchmark suite: ``python -m benchmarks [--quick]`` (``make bench[-quick]``).

Every server under test runs in its own process, pinned to CPU 0 when the machine has two or
more; the load generator (this process) and the mock upstream run on CPU 1. The load generator
(:mod:`benchmarks._loadgen`) checks that every event arrives intact and in order, and every run
is bounded in events and in time.

Scenarios (:mod:`benchmarks._scenarios`), each repeated (``--reps``, default 3; 1 with
``--quick``) with the targets interleaved, medians reported:

(a) throughput at 100 and 1,000 connections, a loop turn per event and as a burst; (b) latency
at 1,000 connections × 20 events/s; (c) server RSS per idle stream at 5,000 and 10,000
streams; (d) relay tokens/s, tokens per CPU-second and per-token latency at 100 and 1,000
streams, on a plain-http and an https upstream, and the relay's start with 1,000 requests sent
at once (first-token latency); (e) ``DELETE`` → upstream closed; (f) the gateway on the memory
store against the Redis store (if ``redis-server`` is installed). ``<peer>@pre-redesign``
peers run the same scenarios on ssegate as of the commit before the redesign.

Results are printed, saved as JSON, and written into ``docs/performance.md`` (between markers,
keeping the prose) with a plot in ``docs/performance/``. CI runs only
``tests/test_benchmarks_smoke.py``, which drives every peer with tiny counts.
"""
