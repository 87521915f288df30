import httpx

from observer_core.testing import daemon_config


def test_event_is_written_and_counted(observer_daemon):
    daemon = observer_daemon.start(daemon_config())
    reply = httpx.post(f"{daemon.url}/event", json={"success": True})
    assert reply.json() == {"accepted": True, "ring_size": 1}
    assert '"success":true' in (daemon.directory / "ops.jsonl").read_text()
    assert daemon.stop() == 0
