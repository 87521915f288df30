"""Reload's parts on their own: the config diff, and ingest held while sinks are swapped."""

from __future__ import annotations

import anyio
import httpx
import pytest

from observer_core.config import load_config
from observer_core.plugins import load_registry
from observer_core.reload_plan import diff, plan_reload, snapshot
from observer_core.testing import free_port

BASE = """
[observer]
cycle_secs = 60
[sources.http]
port = 3801
token = "first-secret"
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
[sinks.debug]
plugin = "console"
enabled = false
"""


def load(tmp_path, text, name="observer.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_config(path, load_registry(), environ={})


def test_instances_are_matched_by_kind_and_name_and_enabling_adds(tmp_path):
    old = load(tmp_path, BASE)
    new = load(
        tmp_path,
        BASE.replace('"first-secret"', '"second-secret"').replace("enabled = false", "")
        + '[sinks.off]\nplugin = "console"\nenabled = false\n',
    )
    plan = plan_reload(old, new)
    assert [item.qualified for item in plan.added] == ["sinks.debug"]
    assert [new.qualified for _, new in plan.changed] == ["sources.http"]
    assert plan.removed == [] and [item.qualified for item in plan.unchanged] == ["sinks.ops"]
    assert plan.refusal is None
    assert plan.diff.summary() == (
        "added [sinks.debug], changed [sources.http], removed [], unchanged [sinks.ops]"
    )


def test_the_snapshot_holds_no_secret(tmp_path):
    written = str(snapshot(load(tmp_path, BASE)))
    assert "first-secret" not in written and "sources.http" in written


@pytest.mark.parametrize(
    ("change", "live", "refused"),
    [
        (("cycle_secs = 60", "cycle_secs = 5\nring_size = 10"), ["cycle_secs", "ring_size"], []),
        (("cycle_secs = 60", "cycle_secs = 60\nmax_field_bytes = 100"), ["max_field_bytes"], []),
        (("cycle_secs = 60", 'cycle_secs = 60\nstate_dir = "elsewhere"'), [], ["state_dir"]),
        (("cycle_secs = 60", "cycle_secs = 60\nrequire_token = true"), [], ["require_token"]),
    ],
)
def test_observer_keys_are_live_or_refused_by_name(tmp_path, change, live, refused):
    old, new = load(tmp_path, BASE), load(tmp_path, BASE.replace(*change))
    found = diff(snapshot(old), snapshot(new))
    assert (found.live_settings, found.refused_settings) == (live, refused)
    refusal = found.refusal("observer.toml")
    if refused:
        assert refusal == (
            f"observer.toml: [observer] {refused[0]}: cannot change while the daemon runs "
            "(restart it to apply)"
        )
    else:
        assert refusal is None


def test_the_same_state_dir_written_another_way_is_no_change(tmp_path):
    old = load(tmp_path, BASE)
    absolute = str(tmp_path / "data/_observer/state")
    new = load(
        tmp_path, BASE.replace("cycle_secs = 60", f'cycle_secs = 60\nstate_dir = "{absolute}"')
    )
    assert diff(snapshot(old), snapshot(new)).refused_settings == []


@pytest.mark.anyio
async def test_ingest_waits_while_commits_are_paused_then_gets_503_with_retry_after(
    observer_engine,
):
    port = free_port()
    config = f"""
    [observer]
    cycle_secs = 3600
    state_dir = "state"
    shutdown_timeout_secs = 0.5
    [sources.http]
    port = {port}
    [sinks.out]
    plugin = "collect"
    """
    event = {"timestamp": "2026-01-01T00:00:00Z", "endpoint": "/x", "success": True}
    async with (
        observer_engine.start(config) as running,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        engine = running.engine
        answers: list[int] = []

        async def post() -> None:
            answers.append((await client.post("/event", json=event)).status_code)

        # Released in time: the post waits, then 200.
        async with anyio.create_task_group() as group, engine.dispatcher.paused():
            group.start_soon(post)
            with anyio.fail_after(5):
                while not engine.pending_work()["emits_pending"]:
                    await anyio.sleep(0.01)
            assert answers == []
        assert answers == [200]

        async with engine.dispatcher.paused():  # held too long: 503 after shutdown_timeout_secs
            began = anyio.current_time()
            reply = await client.post("/event", json=event)
            waited = anyio.current_time() - began
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
        assert 0.4 <= waited < 3
        assert len(running.ring) == 1


def test_a_new_max_field_bytes_restarts_every_source(tmp_path):
    old = load(tmp_path, BASE)
    new = load(tmp_path, BASE.replace("cycle_secs = 60", "cycle_secs = 60\nmax_field_bytes = 9"))
    found = diff(snapshot(old), snapshot(new))
    assert (found.changed, found.unchanged) == (["sources.http"], ["sinks.ops"])
    assert found.live_settings == ["max_field_bytes"]
