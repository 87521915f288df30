"""``GET /ready`` (§12.2) and ``GET /tap`` (§12.3) on real listeners over loopback."""

from __future__ import annotations

import json
import signal
import statistics
import time

import anyio
import httpx
import msgspec
import pytest
from operators_kit import event, metric, read_tap_lines, stalled_tap, wait_subscribers

from observer_core import Finding, Op, tap
from observer_core._engine import dispatch
from observer_core.testing import free_port

INPROCESS = """
[sources.http]
port = {port}
[sinks.out]
plugin = "collect"
"""


@pytest.mark.anyio
async def test_ready_is_503_while_an_ack_holding_sink_cannot_write_and_200_once_it_can(
    observer_engine, monkeypatch
):
    monkeypatch.setattr(dispatch, "READY_PROBE_SECS", 0.1)
    port = free_port()
    async with (
        observer_engine.start(INPROCESS.format(port=port)) as running,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        assert (await client.get("/ready")).json() == {"ready": True}
        sink = running.sink("out")
        sink.failing = OSError(28, "No space left on device")
        assert (await client.post("/event", json=event())).status_code == 503

        reply = await client.get("/ready")
        assert reply.status_code == 503
        assert reply.json() == {"ready": False, "waiting_for": ["sinks.out"]}
        await anyio.sleep(0.3)  # probes keep failing: still not ready
        assert (await client.get("/ready")).status_code == 503

        sink.failing = None  # the disk has room again; no traffic comes in
        with anyio.fail_after(5):
            while (reply := await client.get("/ready")).status_code != 200:
                await anyio.sleep(0.05)
        assert reply.json() == {"ready": True}
        assert (await client.post("/event", json=event())).status_code == 200


@pytest.mark.anyio
async def test_ready_is_open_but_tap_needs_the_token(observer_engine):
    port = free_port()
    config = INPROCESS.format(port=port).replace(
        f"port = {port}", f'port = {port}\ntoken = "s3cret"'
    )
    async with (
        observer_engine.start(config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/tap")).status_code == 401
        assert (await client.get("/stats")).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        async with client.stream("GET", "/tap", headers=auth) as reply:
            assert reply.status_code == 200
            assert reply.headers["content-type"] == "application/x-ndjson"


@pytest.mark.anyio
async def test_tap_streams_what_its_filters_select_ops_and_findings(observer_engine):
    port = free_port()
    async with (
        observer_engine.start(INPROCESS.format(port=port)) as running,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        query = "kind=op,diagnosis&source=a&endpoint=/v1/*&success=false"
        async with client.stream("GET", f"/tap?{query}") as reply:
            assert reply.status_code == 200
            batch = [
                event(source="a", endpoint="/v1/x", success=False, error="e1"),
                event(source="a", endpoint="/v1/x", success=True),  # success=true
                event(source="b", endpoint="/v1/x", success=False),  # other source
                event(source="a", endpoint="/v2/x", success=False),  # endpoint glob
            ]
            assert (await client.post("/events", json=batch)).status_code == 200
            await running.engine.publish(
                [
                    Finding("diagnosis", {"source": "a", "endpoint": "/v1/x"}),
                    Finding("playbook", {"source": "a", "endpoint": "/v1/x"}),
                ]
            )
            lines = reply.aiter_lines()
            with anyio.fail_after(5):
                first = json.loads(await anext(lines))
        assert first["kind"] == "op"
        assert first["record"]["error"] == "e1"
        # success=false selects ops only: the diagnosis is filtered out too; without it:
        async with client.stream("GET", "/tap?kind=diagnosis&source=a") as reply:
            await running.engine.publish(
                [
                    Finding("playbook", {"source": "a"}),
                    Finding("diagnosis", {"source": "b"}),
                    Finding("diagnosis", {"source": "a", "why": "x"}),
                ]
            )
            with anyio.fail_after(5):
                got = json.loads(await anext(reply.aiter_lines()))
        assert got == {"kind": "diagnosis", "record": {"source": "a", "why": "x"}}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("colour=red", "unknown tap parameter 'colour'"),
        ("success=maybe", "bad tap parameter 'success'"),
        ("kind=op,nonsense", "bad tap parameter 'kind': 'nonsense'"),
        ("source=", "tap parameter 'source' is empty"),
        ("source=a&source=b", "tap parameter 'source' given twice"),
    ],
)
async def test_a_bad_tap_query_is_a_400_naming_it(observer_engine, query, named):
    port = free_port()
    async with (
        observer_engine.start(INPROCESS.format(port=port)),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        reply = await client.get(f"/tap?{query}")
        assert reply.status_code == 400
        assert named in reply.json()["error"]


@pytest.mark.anyio
async def test_taps_past_max_taps_get_503_and_a_quiet_tap_gets_keepalives(
    observer_engine, monkeypatch
):
    monkeypatch.setattr(tap, "KEEPALIVE_SECS", 0.2)
    port = free_port()
    config = INPROCESS.format(port=port).replace(f"port = {port}", f"port = {port}\nmax_taps = 1")
    async with (
        observer_engine.start(config),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        async with client.stream("GET", "/tap") as first:
            refused = await client.get("/tap")
            assert refused.status_code == 503
            assert "max_taps" in refused.json()["error"]
            with anyio.fail_after(5):
                assert await anext(first.aiter_lines()) == "{}"
        with anyio.fail_after(5):  # the slot is free again once the first tap left
            while (await client.get("/metrics")).text.find("observer_tap_subscribers 0") < 0:
                await anyio.sleep(0.02)
        async with client.stream("GET", "/tap") as again:
            assert again.status_code == 200


DAEMON = """
[observer]
cycle_secs = 60
state_dir = "state"
[sources.http]
port = {port}
tap_queue_max = 50
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
"""


PADDING = "x" * 8000
"""Large records fill the stalled reader's socket buffers quickly."""


def _post_steadily(url: str, count: int, interval: float, tag: str) -> list[float]:
    """POST ``count`` events one at a time every ``interval`` s; return each latency."""
    latencies = []
    with httpx.Client(timeout=10) as client:
        next_at = time.perf_counter()
        for index in range(count):
            next_at += interval
            started = time.perf_counter()
            body = event(input_summary=f"{tag}{index}", output_summary=PADDING)
            reply = client.post(f"{url}/event", json=body)
            latencies.append(time.perf_counter() - started)
            assert reply.status_code == 200, reply.text
            time.sleep(max(0.0, next_at - time.perf_counter()))
    return latencies


def test_a_stalled_tap_reader_never_slows_ingest_and_is_told_what_it_missed(observer_daemon):
    daemon = observer_daemon.start(DAEMON)
    count, interval = 600, 0.002
    _post_steadily(daemon.url, 100, interval, "warm")
    baseline = _post_steadily(daemon.url, count, interval, "base")

    reader = stalled_tap(daemon.url, "?source=agent")
    wait_subscribers(daemon.url, 1)
    tapped = _post_steadily(daemon.url, count, interval, "tap")

    base_median, tap_median = statistics.median(baseline), statistics.median(tapped)
    print(f"ingest latency median: {base_median * 1e3:.2f} ms alone, {tap_median * 1e3:.2f} tapped")
    assert tap_median <= base_median * 2 + 0.002, (base_median, tap_median)
    dropped_total = metric(daemon.url, "observer_tap_dropped_total")
    assert dropped_total is not None and dropped_total > 0

    # The reader wakes up: it gets what was buffered, one {"dropped": N} line, and no
    # record twice; what it got and what it missed add up to every op posted.
    def complete(lines: list[dict]) -> bool:
        ops = [line for line in lines if line.get("kind") == "op"]
        dropped = sum(line.get("dropped", 0) for line in lines)
        return len(ops) + dropped >= count

    with reader:
        lines = read_tap_lines(reader, complete)
    ops = [line["record"]["input_summary"] for line in lines if line.get("kind") == "op"]
    drops = [line["dropped"] for line in lines if "dropped" in line]
    assert drops and sum(drops) == dropped_total
    assert len(ops) == len(set(ops)) and len(ops) + sum(drops) == count
    assert all(name.startswith("tap") for name in ops)
    assert ops[0] == "tap0" and ops[-1] == f"tap{count - 1}"  # the newest are kept


@pytest.mark.anyio
async def test_the_status_source_serves_ready_tap_and_the_page_too(observer_engine):
    port = free_port()
    config = f"""
    [sources.watch]
    plugin = "status"
    port = {port}
    [sinks.out]
    plugin = "collect"
    """
    async with (
        observer_engine.start(config) as running,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        assert (await client.get("/ready")).json() == {"ready": True}
        page = await client.get("/")
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert (await client.post("/event", json=event())).status_code == 404
        async with client.stream("GET", "/tap?kind=op") as reply:
            await running.emit([msgspec.convert(event(source="fleet"), Op)])
            with anyio.fail_after(5):
                line = json.loads(await anext(reply.aiter_lines()))
        assert line["record"]["source"] == "fleet"


def test_an_open_tap_ends_cleanly_at_shutdown_without_holding_it_up(observer_daemon):
    daemon = observer_daemon.start(DAEMON)
    with httpx.stream("GET", f"{daemon.url}/tap", timeout=10) as reply:
        wait_subscribers(daemon.url, 1)
        httpx.post(f"{daemon.url}/event", json=event(input_summary="last"), timeout=10)
        stopping = time.monotonic()
        daemon.signal(signal.SIGTERM)
        lines = [json.loads(line) for line in reply.iter_lines() if line]  # ends, not cut
    assert daemon.process.wait(10) == 0
    assert time.monotonic() - stopping < 3  # the listener's 5 s grace was not spent on it
    assert [line["record"]["input_summary"] for line in lines if "record" in line] == ["last"]
