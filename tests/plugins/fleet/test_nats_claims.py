"""The fleet's shared memory (JetStream key-value): claims, markers and forward-only marks,
each decided once however many observers ask at the same moment."""

from __future__ import annotations

import signal
import time

import anyio
import pytest
from observer_plugins.fleet.claims import Fleet, FleetConfig, FleetUnavailable, Outcome

from observer_core.testing import make_context


async def fleets(tmp_path, url: str, count: int = 2, buckets: bool = True) -> list[Fleet]:
    """``count`` observers' views of one analyzer instance (same instance name), opened.

    With ``buckets``, the first creates the buckets before the test's calls: nats-server
    2.9 can fail to answer simultaneous creations of one stream (nats-server#3677), which
    the tests of claims, markers and marks are not about.
    """
    nodes = [await opened(tmp_path / f"node{n}", "analyzers.escalation", url) for n in range(count)]
    if buckets:
        await nodes[0].claim("create-the-bucket", lease_secs=60)
        await nodes[0].mark_new(["create-the-marks-bucket"])
    return nodes


_OPENED: list[Fleet] = []


@pytest.fixture(autouse=True)
async def _close_fleets(anyio_backend):
    """Close every Fleet a test opened, so no client keeps reconnecting into the next test."""
    yield
    while _OPENED:
        with anyio.move_on_after(5):
            await _OPENED.pop().aclose()


async def opened(directory, instance: str, url: str, **config) -> Fleet:
    fleet = Fleet(FleetConfig(url=url, **config), make_context(directory, instance))
    await fleet.open()
    _OPENED.append(fleet)
    return fleet


async def all_of(work):
    results = []

    async def run(item):
        results.append(await item)

    async with anyio.create_task_group() as group:
        for item in work:
            group.start_soon(run, item)
    return results


@pytest.mark.anyio
async def test_one_claim_wins_then_it_is_done_for_everyone(tmp_path, nats_server):
    nodes = await fleets(tmp_path, nats_server.url, 4)
    claims = await all_of(node.claim("sig-1", lease_secs=60) for node in nodes)
    assert sorted(claim.outcome.value for claim in claims) == ["busy", "busy", "busy", "won"]
    winner = nodes[[claim.outcome for claim in claims].index(Outcome.WON)]
    await winner.finish("sig-1")
    later = await nodes[0].claim("sig-1", lease_secs=60)
    assert later.outcome is Outcome.DONE
    assert abs(later.at - time.time()) < 5
    for node in nodes:
        await node.aclose()


@pytest.mark.anyio
async def test_a_bucket_another_observer_created_a_moment_ago_is_used(tmp_path, nats_server):
    # Two observers start at once: both look, find no bucket, and create it; JetStream
    # refuses the second creation ("name in use", "subjects overlap"). The first look is
    # made to say "not found" here, after the other observer's bucket exists (with another
    # history, so that JetStream refuses this creation whatever its timing).
    from nats.js.errors import BucketNotFoundError

    [node] = await fleets(tmp_path, nats_server.url, 1, buckets=False)
    js = node.link.js
    await js.create_key_value(bucket=node.config.bucket, history=5)
    real_lookup = js.key_value
    lookups = []

    async def looked_a_moment_too_early(bucket):
        lookups.append(bucket)
        if len(lookups) == 1:
            raise BucketNotFoundError
        return await real_lookup(bucket)

    js.key_value = looked_a_moment_too_early
    assert (await node.claim("sig-6", lease_secs=60)).outcome is Outcome.WON
    assert lookups == [node.config.bucket, node.config.bucket]


@pytest.mark.anyio
async def test_a_bucket_that_takes_no_writes_yet_is_written_when_it_does(tmp_path, nats_server):
    # Just created by another observer, a bucket may not take writes for a moment
    # (JetStream: "no stream"); here it is away for 0.3 s.
    import nats

    [node] = await fleets(tmp_path, nats_server.url, 1)
    admin = await nats.connect(nats_server.url)
    try:
        js = admin.jetstream()
        await js.delete_key_value(node.config.bucket)

        async def back_after(delay):
            await anyio.sleep(delay)
            await js.create_key_value(bucket=node.config.bucket, history=1)

        async with anyio.create_task_group() as group:
            group.start_soon(back_after, 0.3)
            started = time.monotonic()
            assert (await node.claim("sig-7", lease_secs=60)).outcome is Outcome.WON
        assert 0.25 < time.monotonic() - started < 3
    finally:
        await admin.close()


@pytest.mark.anyio
async def test_a_released_claim_can_be_won_again(tmp_path, nats_server):
    first, second = await fleets(tmp_path, nats_server.url)
    claim = await first.claim("sig-2", lease_secs=60)
    assert (await second.claim("sig-2", lease_secs=60)).outcome is Outcome.BUSY
    await first.release("sig-2", claim)
    assert (await second.claim("sig-2", lease_secs=60)).outcome is Outcome.WON


@pytest.mark.anyio
async def test_a_claim_whose_holder_vanished_is_taken_over_after_its_lease(tmp_path, nats_server):
    first, second = await fleets(tmp_path, nats_server.url)
    claim = await first.claim("sig-3", lease_secs=0.3)
    assert claim.outcome is Outcome.WON
    assert (await second.claim("sig-3", lease_secs=0.3)).outcome is Outcome.BUSY
    await anyio.sleep(0.4)  # the holder died: nobody finishes or releases
    assert (await second.claim("sig-3", lease_secs=0.3)).outcome is Outcome.WON
    await first.release("sig-3", claim)  # too late: it is not the holder's to drop any more
    assert (await first.claim("sig-3", lease_secs=60)).outcome is Outcome.BUSY


@pytest.mark.anyio
async def test_done_is_won_again_only_after_again_after(tmp_path, nats_server):
    first, second = await fleets(tmp_path, nats_server.url)
    await first.claim("sig-4", lease_secs=60)
    await first.finish("sig-4")
    assert (await second.claim("sig-4", lease_secs=60, again_after_secs=60)).outcome is (
        Outcome.DONE
    )
    await anyio.sleep(0.3)
    assert (await second.claim("sig-4", lease_secs=60, again_after_secs=0.2)).outcome is (
        Outcome.WON
    )


@pytest.mark.anyio
async def test_each_marker_is_created_by_exactly_one_observer(tmp_path, nats_server):
    first, second = await fleets(tmp_path, nats_server.url)
    items = [f"failure-{n}" for n in range(600)]
    results = await all_of([first.mark_new(items[:400]), second.mark_new(items[200:])])
    created = sum(sum(result) for result in results)
    assert created == 600  # the 200 both asked for went to one of them each
    assert await first.mark_new(["failure-5", "failure-new"]) == [False, True]
    await first.unmark(["failure-5"])
    assert await second.mark_new(["failure-5"]) == [True]


@pytest.mark.anyio
async def test_a_mark_moves_only_forward_and_once(tmp_path, nats_server):
    nodes = await fleets(tmp_path, nats_server.url, 3)
    mark = "2026-01-01T00:00:05.000Z"
    won = await all_of(node.advance("/search", mark) for node in nodes)
    assert sorted(won) == [False, False, True]
    assert await nodes[0].advance("/search", "2026-01-01T00:00:04.000Z") is False
    assert await nodes[1].advance("/search", "2026-01-01T00:00:06.000Z") is True
    assert await nodes[2].advance("/other", mark) is True  # another group, its own mark


@pytest.mark.anyio
async def test_instances_with_other_names_do_not_share(tmp_path, nats_server):
    mine = await opened(tmp_path, "analyzers.esc_a", nats_server.url)
    other = await opened(tmp_path, "analyzers.esc_b", nats_server.url)
    assert (await mine.claim("sig", lease_secs=60)).outcome is Outcome.WON
    assert (await other.claim("sig", lease_secs=60)).outcome is Outcome.WON


@pytest.mark.anyio
async def test_unreachable_nats_decides_nothing_within_a_bound(tmp_path, nats_server):
    [node] = await fleets(tmp_path, nats_server.url, 1)
    await node.claim("warm-up", lease_secs=60)
    nats_server.stop(signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(FleetUnavailable):
        await node.claim("sig-5", lease_secs=60)
    with pytest.raises(FleetUnavailable):
        await node.mark_new(["x"])
    assert time.monotonic() - started < 15
    nats_server.start()
    with anyio.fail_after(20):
        while True:
            try:
                assert (await node.claim("sig-5", lease_secs=60)).outcome is Outcome.WON
                break
            except FleetUnavailable:
                await anyio.sleep(0.2)
    await node.aclose()


@pytest.mark.anyio
async def test_the_token_comes_from_the_environment(tmp_path, nats_server, monkeypatch):
    monkeypatch.delenv("FLEET_TOKEN", raising=False)
    with pytest.raises(
        RuntimeError, match=r"fleet\.token_env: the environment variable FLEET_TOKEN"
    ):
        await opened(tmp_path, "analyzers.escalation", nats_server.url, token_env="FLEET_TOKEN")
