"""Hostile input against a real daemon: bounded batches, labels, logs, /stats, secrets
(CONTRACT §11.3, §11.4), and counted unknown fields."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from observer_core.testing import Daemon, DaemonFactory, StubServer, free_port, wait_for

CONFIG = """
[observer]
cycle_secs = 0.2
[sources.http]
port = {port}
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
fsync = "never"
"""
FORGED = "\n2026-01-01T00:00:00.000Z INFO    observer_core: shutdown complete\x1b[2J"


@pytest.fixture
def daemon(observer_daemon: DaemonFactory) -> Daemon:
    return observer_daemon.start(CONFIG)


def post(daemon: Daemon, path: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{daemon.url}{path}", content=body, timeout=30)


def written(daemon: Daemon) -> int:
    path = daemon.directory / "ops.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def metric_lines(daemon: Daemon, name: str) -> list[str]:
    text = httpx.get(f"{daemon.url}/metrics", timeout=10).text
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def event(**fields: Any) -> bytes:
    return json.dumps({"success": True, **fields}).encode()


class TestBatchBound:
    def test_more_than_max_batch_events_is_413_and_nothing_is_accepted(self, daemon):
        for body in (b"{}\n" * 10_001, b"[" + b",".join([b"{}"] * 10_001) + b"]"):
            reply = post(daemon, "/events", body)
            assert reply.status_code == 413, reply.text
            error = reply.json()["error"]
            assert error.startswith("batch too large: ")
            assert error.endswith("10001 events, more than max_batch_events (10000)")
            assert "retry-after" not in reply.headers
        assert httpx.get(f"{daemon.url}/health").json()["ops_in_ring"] == 0
        assert written(daemon) == 0

    def test_at_the_limit_blank_lines_and_braces_in_strings_do_not_count(self, daemon):
        lines = [b'{"error": "{{{{"}'] * 10_000
        reply = post(daemon, "/events", b"\n\n".join(lines) + b"\n\n\n")
        assert reply.status_code == 200, reply.text
        assert reply.json() == {"accepted": 10_000}
        items = b"[" + b",".join(lines) + b"]"
        assert post(daemon, "/events", items).json() == {"accepted": 10_000}

    def test_lines_not_ending_in_a_brace_are_counted_exactly(self, daemon):
        body = b'{"source": "a"} \r\n' * 10_001
        reply = post(daemon, "/events", body)
        assert reply.status_code == 413
        assert reply.json()["error"] == (
            "batch too large: 10001 events, more than max_batch_events (10000)"
        )
        assert post(daemon, "/events", b" \t\n\x0b\n" * 20_000 + b"{}").json() == {"accepted": 1}

    def test_a_megabyte_of_empty_events_is_413_not_503(self, daemon):
        """The review's case: 1 MiB of ``{}`` lines was 503 ``Retry-After: 1``, forever."""
        body = b"{}\n" * (1048576 // 3)
        reply = post(daemon, "/events", body)
        assert reply.status_code == 413
        assert "max_batch_events" in reply.json()["error"]
        assert written(daemon) == 0

    def test_the_key_is_bounded_by_the_pending_bound(self, observer_daemon):
        path = observer_daemon.write_config(
            CONFIG.replace("port = {port}", "port = 0\nmax_batch_events = 65537")
        )
        result = observer_daemon.run("check", "--config", str(path))
        assert result.returncode == 2
        assert "max_batch_events" in result.stderr and "65536" in result.stderr

    def test_smaller_key_is_honoured(self, observer_daemon):
        daemon = observer_daemon.start(
            CONFIG.replace("port = {port}", "port = {port}\nmax_batch_events = 2")
        )
        assert post(daemon, "/events", b"{}\n{}\n").status_code == 200
        reply = post(daemon, "/events", b"{}\n{}\n{}\n")
        assert reply.status_code == 413
        assert "max_batch_events (2)" in reply.json()["error"]


class TestLabelsAndStats:
    def test_source_labels_are_cut_and_bounded(self, daemon):
        long_source = "s" * 10_000
        sources = [long_source, *(f"source-{n}" for n in range(70))]
        body = b"\n".join(event(source=source) for source in sources)
        assert post(daemon, "/events", body).status_code == 200
        lines = metric_lines(daemon, "observer_ops_received_total")
        values = [re.findall(r'source="([^"]*)"', line)[0] for line in lines]
        assert "s" * 128 in values and long_source not in values
        assert len(set(values)) == 65 and "other" in values
        assert max(map(len, lines)) < 300
        other = daemon.metric("observer_ops_received_total", source="other", outcome="success")
        assert other == 71 - 64

    def test_stats_by_source_is_at_most_64_entries(self, daemon):
        body = b"\n".join(
            event(source=f"source-{n}") for n in range(70) for _ in range(2 if n < 10 else 1)
        )
        assert post(daemon, "/events", body).status_code == 200
        by_source = httpx.get(f"{daemon.url}/stats").json()["by_source"]
        assert len(by_source) == 64
        assert sum(by_source.values()) == 80
        assert all(by_source[f"source-{n}"] == 2 for n in range(10))  # the largest are kept
        assert by_source["other"] == 80 - 20 - 53

    def test_stats_source_names_are_cut_to_128_bytes(self, daemon):
        body = b"\n".join(event(source="é" * 5000 + str(n)) for n in range(3))
        assert post(daemon, "/events", body).status_code == 200
        by_source = httpx.get(f"{daemon.url}/stats").json()["by_source"]
        assert by_source == {"é" * 64: 3}


class TestLogs:
    def test_cycle_line_carries_counts_not_the_sources(self, daemon):
        body = b"\n".join(event(source=f"{n}-" + "x" * 10_000) for n in range(90))
        assert post(daemon, "/events", body).status_code == 200
        daemon.wait_cycles(2)
        cycle_lines = [line for line in daemon.logs().splitlines() if ": total_ops=" in line]
        assert cycle_lines[-1].endswith(" ms)")
        assert "total_ops=90 successes=90 failures=0 sources=90" in cycle_lines[-1]
        assert max(map(len, cycle_lines)) < 200

    @pytest.mark.parametrize("fmt", ["text", "json"])
    def test_client_strings_are_cut_and_escaped(self, observer_daemon, fmt):
        """An unknown field named with a forged log line, then a long one."""
        daemon = observer_daemon.start(CONFIG, args=("--log-format", fmt))
        assert post(daemon, "/event", json.dumps({FORGED: 1}).encode()).status_code == 200
        assert post(daemon, "/event", json.dumps({"y" * 5000: 1}).encode()).status_code == 200
        daemon.wait_log("yyyy")
        logs = daemon.logs()
        assert "\x1b" not in logs
        lines = logs.splitlines()
        assert not any(line.startswith("2026-01-01T00:00:00.000Z") for line in lines)
        messages = [json.loads(line)["message"] for line in lines] if fmt == "json" else lines
        [forged] = [message for message in messages if "shutdown complete" in message]
        assert "\\n2026-01-01T00:00:00.000Z INFO" in forged and "\\x1b[2J" in forged
        [long] = [message for message in messages if "yyyy" in message]
        assert "y" * 120 in long and "y" * 200 not in long

    def test_sig_hash_in_an_escalation_error_cannot_forge_a_line(self, observer_daemon):
        """The review's case: a ``sig_hash`` logged when its escalation fails."""
        config = CONFIG + '[analyzers.escalation]\nurl = "http://127.0.0.1:9"\nthreshold = 1\n'
        daemon = observer_daemon.start(config)
        sig_hash = "a" * 300 + FORGED
        assert post(daemon, "/event", event(success=False, sig_hash=sig_hash)).status_code == 200
        daemon.wait_log("escalation of sig_hash=")
        logs = daemon.logs()
        assert "\x1b" not in logs
        assert not any(line.startswith("2026-01-01T") for line in logs.splitlines())
        [line] = [line for line in logs.splitlines() if "escalation of sig_hash=" in line]
        assert len(line) < 1000


class TestUnknownFields:
    def test_unknown_fields_are_accepted_counted_and_logged_once(self, daemon):
        assert post(daemon, "/event", b'{"sucess": true}').status_code == 200
        assert post(daemon, "/events", b'{"sucess": true, "x": 1}\n{}\n').status_code == 200
        assert post(daemon, "/events", b'[{"sucess": false}, {"source": "a"}]').status_code == 200
        assert daemon.metric("observer_input_unknown_fields_total", field="sucess") == 3
        assert daemon.metric("observer_input_unknown_fields_total", field="x") == 1
        assert written(daemon) == 5
        logged = [line for line in daemon.logs().splitlines() if "'sucess'" in line]
        assert len(logged) == 1 and " INFO " in logged[0]

    def test_rejected_batches_count_nothing_and_known_fields_nothing(self, daemon):
        complete = {
            "timestamp": "2026-01-01T00:00:00.000Z",
            "endpoint": "/e",
            "input_summary": "i",
            "success": True,
            "duration_ms": 1,
            "output_summary": "o",
            "source": "s",
        }
        assert post(daemon, "/event", json.dumps(complete).encode()).status_code == 200
        assert post(daemon, "/events", b'{"typo": 1}\n{"count": "x"}\n').status_code == 400
        assert post(daemon, "/event", b'{"typo": 1, "count": "x"}').status_code == 400
        assert not metric_lines(daemon, "observer_input_unknown_fields_total")

    def test_an_unknown_key_that_is_not_utf8_is_ignored_not_a_500(self, daemon):
        """msgspec skips an unknown key unread: the event is taken, the key not counted."""
        for path, body in [
            ("/event", b'{"": null, "\\u001f\xff": null}'),
            ("/events", b'{"\xff": 1}\n{"typo": 1}\n'),
            ("/events", b'[{"\xff": 1}]'),
        ]:
            assert post(daemon, path, body).status_code == 200
        assert daemon.metric("observer_input_unknown_fields_total", field="typo") == 1
        assert len(metric_lines(daemon, "observer_input_unknown_fields_total")) == 1
        assert written(daemon) == 4

    def test_unknown_field_labels_are_bounded(self, daemon):
        body = b"\n".join(json.dumps({f"f{n}" + "z" * 300: 1}).encode() for n in range(70))
        assert post(daemon, "/events", body).status_code == 200
        lines = metric_lines(daemon, "observer_input_unknown_fields_total")
        assert len(lines) == 65
        assert daemon.metric("observer_input_unknown_fields_total", field="other") == 6
        assert max(map(len, lines)) < 300
        logged = [line for line in daemon.logs().splitlines() if "unknown event field" in line]
        assert len(logged) == 65
        assert "more than 64 distinct unknown event fields" in logged[-1]


class TestSecrets:
    def test_gateway_password_is_masked_in_health_stats_and_logs(
        self, observer_daemon, stub_server
    ):
        service: StubServer = stub_server()
        url = f"http://user:hunter2@127.0.0.1:{service.port}"
        config = CONFIG + (
            f'[sources.gateway]\nplugin = "gateway"\nurl = "{url}"\n'
            f'listen = "127.0.0.1:{free_port()}"\n'
        )
        daemon = observer_daemon.start(config)
        masked = f"http://user:********@127.0.0.1:{service.port}"

        def checked() -> dict[str, Any]:
            return httpx.get(f"{daemon.url}/health").json()["checks"]

        wait_for(lambda: "gateway" in checked(), timeout=10, what="the gateway check")
        assert checked()["gateway"]["url"] == masked + "/health"
        stats = httpx.get(f"{daemon.url}/stats").text
        assert masked in stats
        shown = [httpx.get(f"{daemon.url}/health").text, stats, daemon.logs()]
        assert not any("hunter2" in text for text in shown)
        assert f"to {masked}" in daemon.logs()

    def test_check_resolved_masks_url_passwords_and_tokens(self, observer_daemon):
        config = (
            CONFIG.replace("port = {port}", 'port = 0\ntoken = "tok-secret"')
            + '[sources.gateway]\nplugin = "gateway"\nurl = "https://u:hunter2@gw.example"\n'
        )
        path = observer_daemon.write_config(config)
        result = observer_daemon.run("check", "--config", str(path), "--resolved")
        assert result.returncode == 0, result.stderr
        assert "hunter2" not in result.stdout and "tok-secret" not in result.stdout
        assert 'url = "https://u:********@gw.example"' in result.stdout
        assert 'token = "********"' in result.stdout
