"""The nats source: ops from a durable consumer reach the sinks, each message acknowledged
only after they wrote it; refused ops come back; redeliveries are not counted twice."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
import pytest
from observer_plugins.fleet.source import NatsSourceConfig, SeenSequences
from observer_plugins.fleet.testing import publish

from observer_core import Op

PLUGIN_DIR = Path(__file__).parents[3] / "plugins" / "fleet"

WRITER = """
[sources.bus]
plugin = "nats"
url = "URL"
durable = "writers"
ack_wait_secs = ACK_WAIT
EXTRA
[sinks.out]
plugin = "collect"
accepts = ["op"]
"""


def op_line(n: int, **extra: object) -> bytes:
    op = {
        "timestamp": "2026-01-01T00:00:00.000Z",
        "endpoint": f"/e{n}",
        "input_summary": "i",
        "success": True,
        "duration_ms": n,
        "output_summary": "o",
        "source": "test",
        "id": f"op{n}",
        **extra,
    }
    return json.dumps(op).encode() + b"\n"


def batch(numbers: range) -> bytes:
    return b"".join(op_line(n) for n in numbers)


def config(url: str, ack_wait: float = 30, extra: str = "") -> str:
    return WRITER.replace("URL", url).replace("ACK_WAIT", str(ack_wait)).replace("EXTRA", extra)


async def consumer_info(url: str, durable: str = "writers") -> object:
    import nats

    client = await nats.connect(url)
    try:
        return await client.jetstream().consumer_info("OBSERVER", durable)
    finally:
        await client.close()


def ids(ops: Sequence[Op]) -> list[object]:
    return [op.id for op in ops]


@pytest.mark.anyio
async def test_ops_reach_the_sinks_and_are_acknowledged(observer_engine, nats_server):
    await publish(nats_server.url, "OBSERVER", "observer.ops", [batch(range(0, 3)), op_line(3)])
    async with observer_engine.start(config(nats_server.url)) as engine:
        out = engine.sink("out")
        await engine.wait_until(lambda: len(out.ops) == 4, what="4 ops written")
        assert ids(out.ops) == ["op0", "op1", "op2", "op3"]
        assert out.ops[0].rescue_attempted is msgspec.UNSET  # taken as given, no defaults added
        assert [op.id for op in engine.ring] == ids(out.ops)
        info = await consumer_info(nats_server.url)
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
        assert (
            engine.metric(
                "observer_nats_messages_total", instance="sources.bus", outcome="accepted"
            )
            == 2
        )


@pytest.mark.anyio
async def test_refused_ops_are_handed_back_and_written_later(observer_engine, nats_server):
    async with observer_engine.start(config(nats_server.url)) as engine:
        out = engine.sink("out")
        out.failing = OSError("disk full")
        await publish(nats_server.url, "OBSERVER", "observer.ops", [batch(range(2))])
        await engine.wait_until(
            lambda: (
                engine.metric(
                    "observer_nats_messages_total", instance="sources.bus", outcome="refused"
                )
                >= 1
            ),
            what="the message to be handed back",
        )
        info = await consumer_info(nats_server.url)
        assert info.ack_floor.stream_seq == 0  # not acknowledged
        out.failing = None
        await engine.wait_until(lambda: ids(out.ops) == ["op0", "op1"], timeout=15)
        assert await _acked_all(nats_server.url)


async def _consumer_exists(url: str) -> None:
    from nats.js.errors import NotFoundError

    with anyio.fail_after(10):
        while True:
            try:
                await consumer_info(url)
                return
            except NotFoundError:
                await anyio.sleep(0.05)


async def _acked_all(url: str) -> bool:
    with anyio.fail_after(10):
        while True:
            info = await consumer_info(url)
            if info.num_ack_pending == 0 and info.num_pending == 0:
                return True
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_a_redelivery_of_what_was_emitted_here_is_not_emitted_again(
    observer_engine, nats_server, monkeypatch
):
    """The ack of a written message is lost (as when NATS restarts at that moment):
    JetStream delivers it again, and it is acknowledged without being written twice."""
    from nats.aio.msg import Msg

    real_ack = Msg.ack
    lost: list[Msg] = []

    async def lossy_ack(msg: Msg) -> None:
        if not lost:
            lost.append(msg)
            return
        await real_ack(msg)

    monkeypatch.setattr(Msg, "ack", lossy_ack)
    await publish(nats_server.url, "OBSERVER", "observer.ops", [batch(range(3))])
    async with observer_engine.start(config(nats_server.url, ack_wait=0.5)) as engine:
        await engine.wait_until(
            lambda: (
                engine.metric(
                    "observer_nats_messages_total", instance="sources.bus", outcome="duplicate"
                )
                == 1
            ),
            timeout=15,
            what="the redelivery to be recognised",
        )
        assert ids(engine.sink("out").ops) == ["op0", "op1", "op2"]
        assert ids(engine.ring) == ["op0", "op1", "op2"]
        assert await _acked_all(nats_server.url)


@pytest.mark.anyio
async def test_an_invalid_message_is_dropped_and_counted(observer_engine, nats_server):
    payloads = [b"not json\n", op_line(1, duration_ms=-5), batch(range(2, 4))]
    await publish(nats_server.url, "OBSERVER", "observer.ops", payloads)
    async with observer_engine.start(config(nats_server.url)) as engine:
        out = engine.sink("out")
        await engine.wait_until(lambda: ids(out.ops) == ["op2", "op3"], what="the valid ops")
        assert (
            engine.metric("observer_nats_messages_total", instance="sources.bus", outcome="invalid")
            == 2
        )
        assert engine.errors("sources.bus") == 2
        assert await _acked_all(nats_server.url)  # terminated: never delivered again


@pytest.mark.anyio
async def test_deliver_new_skips_what_was_published_before(observer_engine, nats_server):
    await publish(nats_server.url, "OBSERVER", "observer.ops", [batch(range(2))])
    async with observer_engine.start(config(nats_server.url, extra='deliver = "new"')) as engine:
        out = engine.sink("out")
        await _consumer_exists(nats_server.url)
        await publish(nats_server.url, "OBSERVER", "observer.ops", [batch(range(2, 3))])
        await engine.wait_until(lambda: ids(out.ops) == ["op2"])


@pytest.mark.anyio
async def test_the_stream_is_waited_for(observer_engine, nats_server):
    async with observer_engine.start(config(nats_server.url)) as engine:
        out = engine.sink("out")
        status = engine.component("bus").ctx.status
        await engine.wait_until(
            lambda: "stream OBSERVER not found" in str(status.get("nats_error")),
            what="the source to say it waits for the stream",
        )
        await publish(nats_server.url, "OBSERVER", "observer.ops", [batch(range(1))])
        await engine.wait_until(lambda: ids(out.ops) == ["op0"], timeout=15)


def test_seen_sequences_forget_the_oldest():
    seen = SeenSequences(3)
    for seq in (1, 2, 3, 2, 4):
        seen.add(seq)
    assert len(seen) == 3
    assert 1 not in seen
    assert all(seq in seen for seq in (2, 3, 4))


def test_sample_source_table_decodes():
    table = tomllib.loads((PLUGIN_DIR / "sample.toml").read_text())["sources"]["bus"]
    assert table.pop("plugin") == "nats"
    assert msgspec.convert(table, NatsSourceConfig).durable == "writers"


def test_wrong_durable_is_a_config_error(observer_daemon):
    path = observer_daemon.write_config('[sources.bus]\nplugin = "nats"\ndurable = "a.b"\n')
    result = observer_daemon.run("check", "--config", str(path))
    assert result.returncode == 2
    assert "[sources.bus] durable: 'a.b' is not a consumer name" in result.stderr
