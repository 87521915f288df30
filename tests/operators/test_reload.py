"""Reload without a restart (contract §12.1), each against the real daemon process."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from operators_kit import event

from observer_core.testing import Daemon, DaemonFactory, daemon_config, free_port, wait_for

BASE = daemon_config(state_dir="state")

ALERTS = (
    daemon_config(cycle_secs=0.2, state_dir="state")
    + """\
[sinks.alerts]
plugin = "jsonl"
path = "alerts.jsonl"
accepts = ["alert"]
[analyzers.alerts]
enabled = {enabled}
[[analyzers.alerts.rules]]
name = "failing"
when = "failure_rate"
above = 0.5
window_secs = 1
min_ops = 1
"""
)


def outcome(daemon: Daemon) -> dict[str, Any]:
    """``state_dir/reload.json``."""
    data: dict[str, Any] = json.loads((daemon.directory / "state" / "reload.json").read_text())
    return data


def rewrite(daemon: Daemon, text: str) -> None:
    """Replace the daemon's config file (``{port}`` is its port)."""
    daemon.config_path.write_text(text.replace("{port}", str(daemon.port)))


def sighup_and_wait(daemon: Daemon) -> dict[str, Any]:
    """SIGHUP, then wait for the next outcome in ``reload.json``."""
    before = outcome(daemon)["generation"]
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: outcome(daemon)["generation"] > before, 20, what="a reload outcome")
    return outcome(daemon)


def reload(factory: DaemonFactory, *args: str) -> Any:
    return factory.run("reload", "--config", "observer.toml", *args)


def health_config(daemon: Daemon) -> dict[str, Any]:
    config: dict[str, Any] = httpx.get(f"{daemon.url}/health", timeout=10).json()["config"]
    return config


def keep_alive_request(sock: socket.socket, host: str) -> bytes:
    """``GET /health`` on an open keep-alive connection; the whole answer."""
    sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        ).split(b":")[1]
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def firings(daemon: Daemon) -> int:
    """``firing`` alerts written to ``alerts.jsonl`` so far."""
    alerts = daemon.directory / "alerts.jsonl"
    text = alerts.read_text() if alerts.exists() else ""
    return sum('"firing"' in line for line in text.splitlines())


def fail_until(daemon: Daemon, done: Any, timeout: float = 20.0, what: str = "") -> None:
    """Post a failure every 0.1 s until ``done()`` holds (the alert rule's window is 1 s:
    failures posted once may age out before the analyzer decides)."""

    def post_and_check() -> bool:
        daemon.post_events([event(success=False)])
        return bool(done())

    wait_for(post_and_check, timeout, interval=0.1, what=what)


def reload_under_load(
    factory: DaemonFactory,
    daemon: Daemon,
    text: str,
    post: Callable[[threading.Event], None],
    progress: Callable[[], int],
    step: int,
    what: str,
) -> None:
    """Run ``post(stop)`` on a thread until ``stop`` is set; once ``progress()`` reaches
    ``step``, reload the daemon to ``text`` (it must be applied), then wait for ``step``
    more before stopping the thread."""
    stop = threading.Event()
    poster = threading.Thread(target=post, args=(stop,))
    poster.start()
    try:
        wait_for(lambda: progress() >= step, 20, what=f"{step} {what} before the reload")
        rewrite(daemon, text)
        result = reload(factory)
        assert result.returncode == 0, result.stderr
        at_reload = progress()
        wait_for(lambda: progress() >= at_reload + step, 20, what=f"{step} {what} after it")
    finally:
        stop.set()
        poster.join(30)


def listening_inode(port: int) -> str:
    """The inode of the socket listening on ``port`` (Linux's /proc/net/tcp): the same
    after a reload only when the daemon kept that socket."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def test_the_daemon_starts_at_generation_1_and_health_shows_it(observer_daemon):
    daemon = observer_daemon.start(BASE)
    written = outcome(daemon)
    assert written["generation"] == 1 and written["result"] == "success"
    assert written["error"] is None and written["at"].endswith("Z")
    config = health_config(daemon)
    assert config == {"generation": 1, "loaded_at": written["at"], "last_error": None}
    assert daemon.metric("observer_config_last_reload_successful") == 1
    assert daemon.metric("observer_config_reloads_total", result="failure") == 0
    stamp = daemon.metric("observer_config_last_reload_success_timestamp_seconds")
    assert stamp is not None and abs(stamp - time.time()) < 60


def test_turning_an_analyzer_off_and_on_keeps_its_memory_and_the_listener(observer_daemon):
    daemon = observer_daemon.start(ALERTS.replace("{enabled}", "true"))
    host = f"127.0.0.1:{daemon.port}"
    fail_until(daemon, lambda: firings(daemon) == 1, what="the alert")

    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as kept:
        assert b" 200 " in keep_alive_request(kept, host)
        rewrite(daemon, ALERTS.replace("{enabled}", "false"))
        result = reload(observer_daemon)
        assert result.returncode == 0, result.stderr
        daemon.wait_log("removed [analyzers.alerts]")
        assert "unchanged [sources.http, sinks.ops, sinks.alerts]" in daemon.logs()
        stats = httpx.get(f"{daemon.url}/stats", timeout=10).json()
        assert "analyzers.alerts" not in stats["analyzers"]

        rewrite(daemon, ALERTS.replace("{enabled}", "true"))
        result = reload(observer_daemon)
        assert result.returncode == 0, result.stderr
        daemon.wait_log("added [analyzers.alerts]")
        # It remembers it already fired (its state was saved when it stopped).
        daemon.wait_log("still firing from the last run: failing")
        # Failing on for 2 s (twice its window): it would fire again if it had forgotten.
        until = time.monotonic() + 2
        fail_until(daemon, lambda: time.monotonic() > until, what="2 s of failures")
        stats = httpx.get(f"{daemon.url}/stats", timeout=10).json()
        assert stats["analyzers"]["analyzers.alerts"]["last_run"] is not None
        assert firings(daemon) == 1  # not fired again: its memory came back
        # The http source was never touched: the connection opened before still serves.
        assert b" 200 " in keep_alive_request(kept, host)
    assert outcome(daemon)["generation"] == 3
    assert daemon.metric("observer_config_reloads_total", result="success") == 2


def test_a_sinks_path_changes_under_steady_load_without_losing_or_doubling_an_event(
    observer_daemon,
):
    daemon = observer_daemon.start(BASE)
    acked: list[str] = []
    refused = 0

    def post(stop: threading.Event) -> None:
        nonlocal refused
        with httpx.Client(base_url=daemon.url, timeout=30) as client:
            number = 0
            while not stop.is_set():
                name = f"e{number}"
                number += 1
                reply = client.post("/event", json=event(input_summary=name))
                if reply.status_code == 200:
                    acked.append(name)
                else:
                    assert reply.status_code == 503 and "retry-after" in reply.headers
                    refused += 1
                time.sleep(0.002)

    moved = BASE.replace('path = "ops.jsonl"', 'path = "moved.jsonl"')
    reload_under_load(observer_daemon, daemon, moved, post, lambda: len(acked), 100, "events")
    assert daemon.stop() == 0
    written = [
        json.loads(line)["input_summary"]
        for name in ("ops.jsonl", "moved.jsonl")
        for line in (daemon.directory / name).read_text().splitlines()
    ]
    assert len(written) == len(set(written)), "an event was written twice"
    assert set(acked) <= set(written), "an acknowledged event is missing"
    assert (daemon.directory / "moved.jsonl").stat().st_size > 0
    assert "changed [sinks.ops]" in daemon.logs()
    print(f"{len(acked)} acknowledged, {refused} refused with 503 during the swap")


def test_a_new_port_that_is_taken_is_rolled_back_and_the_old_one_still_serves(
    observer_daemon,
):
    daemon = observer_daemon.start(BASE)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        rewrite(daemon, BASE.replace("port = {port}", f"port = {busy}"))
        result = reload(observer_daemon)
    assert result.returncode == 1
    assert "reload refused" in result.stderr and "[sources.http] cannot start" in result.stderr
    assert "rolled back" in result.stderr
    daemon.post_events([event(input_summary="after")])  # the old port serves
    assert httpx.get(f"{daemon.url}/ready", timeout=10).status_code == 200
    assert daemon.metric("observer_config_reloads_total", result="failure") == 1
    assert daemon.metric("observer_config_last_reload_successful") == 0
    config = health_config(daemon)
    assert config["generation"] == 1 and "cannot start" in config["last_error"]


def test_an_invalid_file_leaves_the_old_pipeline_untouched(observer_daemon):
    daemon = observer_daemon.start(BASE)
    daemon.post_events([event(input_summary="before")])
    rewrite(daemon, BASE.replace("port = {port}", 'port = "x"'))

    result = reload(observer_daemon)  # checked before the daemon is signalled
    assert result.returncode == 2
    assert "config error" in result.stderr and "[sources.http] port" in result.stderr
    assert outcome(daemon)["generation"] == 1

    written = sighup_and_wait(daemon)  # the daemon itself refuses it
    assert written["result"] == "failure" and "[sources.http] port" in written["error"]
    daemon.wait_log("reload refused: config error:")
    daemon.post_events([event(input_summary="after")])
    lines = (daemon.directory / "ops.jsonl").read_text().splitlines()
    assert [json.loads(line)["input_summary"] for line in lines] == ["before", "after"]
    assert daemon.metric("observer_config_reloads_total", result="failure") == 1
    assert health_config(daemon)["last_error"] == written["error"]


def test_reload_validates_in_the_daemons_environment_not_its_own(observer_daemon):
    daemon = observer_daemon.start(BASE, env={"DAEMON_ONLY": "daemon"})
    # Valid here, not where the daemon runs: refused before the daemon is signalled.
    rewrite(daemon, BASE.replace('path = "ops.jsonl"', 'path = "${CLI_ONLY}.jsonl"'))
    result = observer_daemon.run("reload", "--config", "observer.toml", env={"CLI_ONLY": "x"})
    assert result.returncode == 2
    assert "CLI_ONLY is not set" in result.stderr
    assert outcome(daemon)["generation"] == 1
    # Unset here, set where the daemon runs: valid, and applied.
    rewrite(daemon, BASE.replace('path = "ops.jsonl"', 'path = "${DAEMON_ONLY}.jsonl"'))
    result = reload(observer_daemon)
    assert result.returncode == 0, result.stderr
    daemon.post_events([event(input_summary="there")])
    assert "there" in (daemon.directory / "daemon.jsonl").read_text()


def test_reload_exits_1_with_the_reason_when_the_daemon_refuses_the_file(observer_daemon):
    daemon = observer_daemon.start(BASE)
    rewrite(daemon, BASE.replace("cycle_secs = 60", "cycle_secs = 60\nrequire_token = true"))
    result = reload(observer_daemon)
    assert result.returncode == 1
    assert result.stderr == (
        "observer-core: reload refused: observer.toml: [observer] require_token: cannot "
        "change while the daemon runs (restart it to apply)\n"
    )
    daemon.post_events([event(input_summary="still")])


def test_a_state_dir_change_is_refused_naming_the_key(observer_daemon):
    daemon = observer_daemon.start(BASE)
    changed = BASE.replace('state_dir = "state"', 'state_dir = "other"').replace(
        'path = "ops.jsonl"', 'path = "moved.jsonl"'
    )
    rewrite(daemon, changed)
    written = sighup_and_wait(daemon)
    assert written["result"] == "failure"
    assert "[observer] state_dir" in written["error"] and "restart" in written["error"]
    daemon.post_events([event(input_summary="kept")])
    assert not (daemon.directory / "moved.jsonl").exists()  # nothing else was applied
    assert "kept" in (daemon.directory / "ops.jsonl").read_text()


def test_dry_run_prints_what_would_change_and_changes_nothing(observer_daemon):
    daemon = observer_daemon.start(BASE + '[sinks.old]\nplugin = "console"\n')
    rewrite(
        daemon,
        BASE.replace('path = "ops.jsonl"', 'path = "moved.jsonl"').replace(
            "cycle_secs = 60", "cycle_secs = 30"
        )
        + '[sinks.new]\nplugin = "console"\n',
    )
    result = reload(observer_daemon, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()[1:]]
    assert lines == [
        ["added", "sinks.new"],
        ["changed", "sinks.ops"],
        ["removed", "sinks.old"],
        ["kept", "sources.http"],
        ["changed", "[observer]", "cycle_secs"],
    ]
    assert outcome(daemon)["generation"] == 1


def test_reload_without_a_daemon_exits_3(observer_daemon):
    observer_daemon.write_config(BASE.replace("{port}", str(free_port())))
    result = reload(observer_daemon)
    assert result.returncode == 3
    assert "no daemon holds state_dir" in result.stderr


def test_max_field_bytes_changes_live_for_every_source(observer_daemon):
    daemon = observer_daemon.start(BASE)
    long = event(input_summary="x" * 300)
    assert httpx.post(f"{daemon.url}/event", json=long, timeout=10).status_code == 200
    rewrite(daemon, BASE.replace("cycle_secs = 60", "cycle_secs = 60\nmax_field_bytes = 100"))
    assert reload(observer_daemon).returncode == 0
    daemon.wait_log("changed [sources.http]")  # restarted with the new bound (same socket)
    reply = httpx.post(f"{daemon.url}/event", json=long, timeout=10)
    assert reply.status_code == 400 and "max_field_bytes" in reply.text


def test_a_shorter_cycle_takes_effect_at_once(observer_daemon):
    daemon = observer_daemon.start(BASE)  # cycle_secs = 60: no cycle during this test
    rewrite(daemon, BASE.replace("cycle_secs = 60", "cycle_secs = 0.2"))
    assert reload(observer_daemon).returncode == 0
    daemon.wait_cycles(3, timeout=10)


def test_ring_size_shrinks_live_keeping_the_newest_ops(observer_daemon):
    daemon = observer_daemon.start(BASE)
    daemon.post_events([event(input_summary=f"o{n}") for n in range(10)])
    rewrite(daemon, BASE.replace("cycle_secs = 60", "cycle_secs = 60\nring_size = 4"))
    assert reload(observer_daemon).returncode == 0
    stats = httpx.get(f"{daemon.url}/stats", timeout=10).json()
    assert stats["ring_size"] == 4 and stats["total"] == 4
    daemon.post_events([event(input_summary="next")])
    assert httpx.get(f"{daemon.url}/stats", timeout=10).json()["total"] == 4
    assert health_config(daemon)["generation"] == 2


def test_a_token_rotation_keeps_the_listening_socket_and_refuses_nobody(observer_daemon):
    tokened = BASE.replace("port = {port}", 'port = {port}\ntoken = "old"')
    daemon = observer_daemon.start(tokened)
    answers: list[int | str] = []

    def post(
        stop: threading.Event,
    ) -> None:  # a new connection each time: a closed port would refuse one
        while not stop.is_set():
            try:
                reply = httpx.post(
                    f"{daemon.url}/event",
                    json=event(),
                    headers={"Authorization": "Bearer old", "Connection": "close"},
                    timeout=10,
                )
                answers.append(reply.status_code)
            except httpx.TransportError as exc:
                answers.append(repr(exc))

    before = listening_inode(daemon.port)
    rotated = tokened.replace('token = "old"', 'token = ["new", "old"]')
    reload_under_load(observer_daemon, daemon, rotated, post, lambda: len(answers), 20, "answers")
    assert set(answers) == {200}, [answer for answer in answers if answer != 200][:5]
    assert listening_inode(daemon.port) == before  # never closed, never bound again
    daemon.wait_log("changed [sources.http]")
    daemon.wait_log("still listening on")
    reply = httpx.get(f"{daemon.url}/stats", headers={"Authorization": "Bearer new"}, timeout=10)
    assert reply.status_code == 200


def test_a_gateway_proxy_change_keeps_its_socket_refuses_nobody_and_uses_the_new_upstream(
    observer_daemon, stub_server
):
    old, new, proxy_port = stub_server(), stub_server(), free_port()
    proxy = f"http://127.0.0.1:{proxy_port}"
    gateway = (
        f'[sources.gateway]\nurl = "{old.url}"\nlisten = "127.0.0.1:{proxy_port}"\n'
        'health_check = false\nlisten_token = "old"\n'
    )
    daemon = observer_daemon.start(BASE + gateway)
    answers: list[int | str] = []

    def call(stop: threading.Event) -> None:  # a new connection each time, as above
        while not stop.is_set():
            try:
                reply = httpx.post(
                    f"{proxy}/tools/call",
                    json={"tool": "t"},
                    headers={"X-Observer-Token": "old", "Connection": "close"},
                    timeout=10,
                )
                answers.append(reply.status_code)
            except httpx.TransportError as exc:
                answers.append(repr(exc))

    before = listening_inode(proxy_port)
    changed = BASE + gateway.replace(old.url, new.url).replace('"old"', '["new", "old"]')
    reload_under_load(observer_daemon, daemon, changed, call, lambda: len(answers), 20, "calls")
    assert set(answers) == {200}, [answer for answer in answers if answer != 200][:5]
    assert listening_inode(proxy_port) == before  # never closed, never bound again
    daemon.wait_log("changed [sources.gateway]")
    daemon.wait_log("still proxying")
    called_old = len(old.requests)
    reply = httpx.get(f"{proxy}/after", headers={"X-Observer-Token": "new"}, timeout=10)
    assert reply.status_code == 200
    assert [request.path for request in new.requests][-1] == "/after"  # the new upstream
    assert len(old.requests) == called_old


def test_an_instance_the_rollback_cannot_restart_stays_down_and_ready_names_it(
    observer_daemon,
):
    logged = BASE.replace('path = "ops.jsonl"', 'path = "logs/ops.jsonl"')
    daemon = observer_daemon.start(logged)
    daemon.post_events([event(input_summary="before")])
    logs = daemon.directory / "logs"
    logs.rename(daemon.directory / "logs.old")
    logs.write_text("a file where the sink's folder was\n")  # the old sink cannot reopen
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        rewrite(
            daemon,
            BASE.replace('path = "ops.jsonl"', 'path = "moved.jsonl"')
            + f'[sources.extra]\nplugin = "status"\nport = {busy}\n',
        )
        result = reload(observer_daemon)
    assert result.returncode == 1
    assert "[sources.extra] cannot start" in result.stderr
    assert "rolled back; sinks.ops could not be restarted" in result.stderr
    ready = httpx.get(f"{daemon.url}/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["waiting_for"] == ["sinks.ops"]
    reply = httpx.post(f"{daemon.url}/event", json=event(input_summary="lost?"), timeout=10)
    assert reply.status_code == 503  # nothing is acknowledged that no sink wrote

    logs.unlink()  # the operator repairs it and reloads the same file again
    rewrite(daemon, logged)
    result = reload(observer_daemon)
    assert result.returncode == 0, result.stderr
    assert httpx.get(f"{daemon.url}/ready", timeout=10).status_code == 200
    daemon.post_events([event(input_summary="after")])
    assert "after" in (logs / "ops.jsonl").read_text()


def test_an_instance_whose_plugin_changed_starts_without_the_old_ones_state(observer_daemon):
    memory = ALERTS.replace("{enabled}", "true").replace("[analyzers.alerts]", "[analyzers.a]")
    memory = memory.replace("[[analyzers.alerts.rules]]", "[[analyzers.a.rules]]")
    memory = memory.replace("[analyzers.a]\n", '[analyzers.a]\nplugin = "alerts"\n')
    daemon = observer_daemon.start(memory)
    fail_until(daemon, lambda: firings(daemon) == 1, what="the alert")
    playbook = memory.split("[analyzers.a]")[0] + '[analyzers.a]\nplugin = "playbook"\n'
    rewrite(daemon, playbook)
    assert reload(observer_daemon).returncode == 0
    daemon.wait_log("plugin alerts replaced by playbook")
    assert list((daemon.directory / "state").glob("analyzers.a.alerts-*"))

    rewrite(daemon, memory)  # back to alerts: a new start, not the old memory
    assert reload(observer_daemon).returncode == 0
    fail_until(daemon, lambda: firings(daemon) == 2, what="the alert firing again")
    assert "still firing from the last run" not in daemon.logs()


def test_reload_help_names_its_exit_statuses(observer_daemon):
    result = observer_daemon.run("reload", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--dry-run" in text and "Exit 0 when it was applied, 1 when the daemon refused" in text
    assert "3 when no daemon holds the state_dir" in text
