"""The http source end to end: the real daemon over loopback (CONTRACT §6)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

CONFIG = """
[observer]
cycle_secs = 60
max_field_bytes = 1000
[sources.http]
port = {port}
max_body_bytes = 4096
header_timeout_secs = 1
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
fsync = "never"
"""


@pytest.fixture
def daemon(observer_daemon):
    return observer_daemon.start(CONFIG)


def lines(daemon) -> list[dict]:
    path = daemon.directory / "ops.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def post(daemon, path: str, body: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(f"{daemon.url}{path}", content=body, headers=headers)


class TestEvent:
    def test_defaults_for_missing_fields(self, daemon):
        reply = post(daemon, "/event", "{}")
        assert reply.status_code == 200
        assert reply.json() == {"accepted": True, "ring_size": 1}
        [op] = lines(daemon)
        timestamp = op.pop("timestamp")
        assert len(timestamp) == 24 and timestamp.endswith("Z") and timestamp[19] == "."
        assert op == {
            "endpoint": "scenario:fill",
            "input_summary": "? ?×? in ?, ?",
            "success": False,
            "duration_ms": 0,
            "output_summary": "failed",
            "source": "scenario",
            "rescue_attempted": False,
            "rescue_succeeded": False,
        }

    def test_input_summary_and_output_summary_from_parts(self, daemon):
        event = {
            "event_kind": "fill",
            "role": "welder",
            "count": 3,
            "city": "Austin",
            "state": "TX",
            "success": True,
            "staffer_id": "s1",
            "timestamp": "2026-01-02T03:04:05.678Z",
        }
        assert post(daemon, "/event", json.dumps(event)).status_code == 200
        [op] = lines(daemon)
        assert op["input_summary"] == "fill welder×3 in Austin, TX"
        assert op["output_summary"] == "filled"
        assert op["timestamp"] == "2026-01-02T03:04:05.678Z"
        assert op["staffer_id"] == "s1" and op["count"] == 3

    def test_failure_output_is_the_error(self, daemon):
        post(daemon, "/event", '{"error": "no staff", "success": false}')
        assert lines(daemon)[0]["output_summary"] == "no staff"

    def test_null_means_absent_and_unknown_fields_are_ignored(self, daemon):
        post(daemon, "/event", '{"endpoint": null, "error": null, "whatever": [1, 2]}')
        [op] = lines(daemon)
        assert op["endpoint"] == "scenario:fill"
        assert "error" not in op and "whatever" not in op

    def test_client_fields_are_kept(self, daemon):
        event = {
            "id": "req-1",
            "source": "langfuse",
            "attributes": {"model": "m", "tokens": 12, "cached": False},
            "duration_ms": 12.5,
        }
        post(daemon, "/event", json.dumps(event))
        [op] = lines(daemon)
        assert op["id"] == "req-1" and op["source"] == "langfuse"
        assert op["attributes"] == {"model": "m", "tokens": 12, "cached": False}
        assert op["duration_ms"] == 12.5

    def test_timestamp_with_offset_becomes_utc(self, daemon):
        post(daemon, "/event", '{"timestamp": "2026-01-02T03:04:05.5+02:00"}')
        assert lines(daemon)[0]["timestamp"] == "2026-01-02T01:04:05.500Z"

    def test_timestamp_without_offset_is_utc(self, daemon):
        post(daemon, "/event", '{"timestamp": "2026-01-02T03:04:05"}')
        assert lines(daemon)[0]["timestamp"] == "2026-01-02T03:04:05.000Z"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ('{"duration_ms": -1}', "duration_ms"),
            ('{"duration_ms": "12"}', "duration_ms"),
            ('{"duration_ms": true}', "duration_ms"),
            ('{"success": 1}', "success"),
            ('{"count": 1.5}', "count"),
            ('{"count": false}', "count"),
            ('{"source": ""}', "source"),
            ('{"timestamp": "yesterday"}', "timestamp"),
            ('{"timestamp": "0001-01-01T00:00:00+01:00"}', "timestamp"),
            ('{"id": "' + "x" * 129 + '"}', "id"),
            ('{"endpoint": "' + "x" * 1001 + '"}', "endpoint"),
            ('{"attributes": {"a": [1]}}', "attributes"),
        ],
    )
    def test_wrong_type_is_400_naming_the_field_and_changes_nothing(self, daemon, body, field):
        reply = post(daemon, "/event", body)
        assert reply.status_code == 400
        assert reply.json()["error"].startswith(f"{field}")
        assert lines(daemon) == []
        assert httpx.get(f"{daemon.url}/health").json()["ops_in_ring"] == 0

    @pytest.mark.parametrize("body", ["{", "[1]", '"text"', "", "\xff"])
    def test_invalid_json_or_non_object_is_400(self, daemon, body):
        reply = post(daemon, "/event", body.encode("latin-1"))
        assert reply.status_code == 400
        assert "error" in reply.json()


class TestEvents:
    def test_ndjson_with_blank_lines(self, daemon):
        body = '{"success": true}\n\n  \n{"endpoint": "/x"}\n'
        reply = post(daemon, "/events", body)
        assert reply.json() == {"accepted": 2}
        assert [op["output_summary"] for op in lines(daemon)] == ["filled", "failed"]

    def test_json_array_and_content_type_is_ignored(self, daemon):
        reply = post(
            daemon, "/events", ' \n[{"success": true}, {}]', **{"content-type": "text/plain"}
        )
        assert reply.json() == {"accepted": 2}

    @pytest.mark.parametrize("body", ["", "\n \n", "[]"])
    def test_empty_batch_is_400(self, daemon, body):
        assert post(daemon, "/events", body).status_code == 400

    def test_one_bad_line_rejects_the_whole_batch_naming_the_line(self, daemon):
        body = '{}\n{}\n{"duration_ms": "slow"}\n{}\n'
        reply = post(daemon, "/events", body)
        assert reply.status_code == 400
        assert reply.json()["error"].startswith("line 3: duration_ms:")
        assert lines(daemon) == []
        assert httpx.get(f"{daemon.url}/stats").json()["total"] == 0

    def test_bad_array_item_is_named(self, daemon):
        reply = post(daemon, "/events", '[{}, {"count": "x"}]')
        assert reply.status_code == 400
        assert reply.json()["error"].startswith("item 2: count:")


class TestReadEndpoints:
    def test_health(self, daemon):
        post(daemon, "/event", "{}")
        health = httpx.get(f"{daemon.url}/health").json()
        loaded_at = health["config"]["loaded_at"]
        assert health == {
            "status": "ok",
            "ops_in_ring": 1,
            "checks": {},
            "config": {"generation": 1, "loaded_at": loaded_at, "last_error": None},
        }

    def test_stats_counts_the_ring_and_lists_last_ten_scenario_ops(self, daemon):
        events = [{"success": i % 3 == 0, "staffer_id": f"s{i}", "role": "r"} for i in range(12)]
        events.append({"source": "mcp", "success": True})
        post(daemon, "/events", "\n".join(json.dumps(event) for event in events))
        stats = httpx.get(f"{daemon.url}/stats").json()
        assert stats["total"] == 13
        assert stats["successes"] == 5 and stats["failures"] == 8
        assert stats["by_source"] == {"scenario": 12, "mcp": 1}
        recent = stats["recent_scenario_ops"]
        assert [entry["staffer"] for entry in recent] == [f"s{i}" for i in range(2, 12)]
        assert set(recent[0]) == {"ts", "ok", "staffer", "kind", "role"}
        assert recent[0]["kind"] is None and recent[0]["role"] == "r"

    def test_metrics(self, daemon):
        post(daemon, "/events", '{"success": true}\n{"source": "mcp"}')
        post(daemon, "/event", "{")
        text = httpx.get(f"{daemon.url}/metrics").text
        for family in (
            "observer_ops_received_total",
            "observer_ring_ops",
            "observer_cycle_duration_seconds",
            "observer_cycles_skipped_total",
            "observer_instance_errors_total",
            "observer_sink_queue_depth",
            "observer_sink_dropped_total",
            "observer_requests_rejected_total",
        ):
            assert f"# TYPE {family} " in text
        assert 'observer_ops_received_total{outcome="success",source="scenario"} 1' in text
        assert 'observer_ops_received_total{outcome="failure",source="mcp"} 1' in text
        assert 'observer_requests_rejected_total{status="400"} 1' in text
        assert "observer_ring_ops 2" in text

    def test_at_most_64_source_labels(self, daemon):
        body = "\n".join(json.dumps({"source": f"src{i}"}) for i in range(70))
        post(daemon, "/events", body)
        text = httpx.get(f"{daemon.url}/metrics").text
        labels = {
            line.split('source="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith("observer_ops_received_total{")
        }
        assert len(labels) == 65 and "other" in labels
        assert 'observer_ops_received_total{outcome="failure",source="other"} 6' in text


class TestRejections:
    def test_unknown_path_404_before_method(self, daemon):
        reply = httpx.delete(f"{daemon.url}/nope")
        assert reply.status_code == 404 and "error" in reply.json()

    def test_wrong_method_405_with_allow(self, daemon):
        reply = httpx.get(f"{daemon.url}/event")
        assert reply.status_code == 405 and reply.headers["allow"] == "POST"
        assert httpx.post(f"{daemon.url}/stats").headers["allow"] == "GET"

    def test_body_over_limit_is_413_and_changes_nothing(self, daemon):
        reply = post(daemon, "/events", "{}\n" * 2000)
        assert reply.status_code == 413
        assert lines(daemon) == []

    def test_slow_headers_are_cut_off(self, daemon):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as client:
            client.sendall(b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.monotonic()
            received = b""
            while chunk := client.recv(1024):  # the server closes: recv returns b""
                received += chunk
            assert time.monotonic() - started < 4  # header_timeout_secs = 1
            assert b"200" not in received


class TestToken:
    @pytest.fixture
    def daemon(self, observer_daemon):
        return observer_daemon.start(
            CONFIG.replace("port = {port}", 'port = {port}\ntoken = "t0ken"')
        )

    def test_health_stays_open(self, daemon):
        assert httpx.get(f"{daemon.url}/health").status_code == 200

    @pytest.mark.parametrize(
        "header", [None, "Bearer wrong", "t0ken", "Bearer t0kenx", "Basic t0ken", "Bearert0ken"]
    )
    def test_missing_or_wrong_token_is_401(self, daemon, header):
        headers = {"authorization": header} if header else {}
        for method, path in (("POST", "/event"), ("GET", "/stats"), ("GET", "/metrics")):
            reply = httpx.request(method, f"{daemon.url}{path}", content="{}", headers=headers)
            assert reply.status_code == 401
        assert lines(daemon) == []

    def test_right_token_is_accepted_and_never_logged(self, daemon):
        reply = post(daemon, "/event", "{}", authorization="Bearer t0ken")
        assert reply.status_code == 200
        for scheme_in_any_case in ("bearer t0ken", "BEARER  t0ken"):  # RFC 7235
            assert post(daemon, "/event", "{}", authorization=scheme_in_any_case).status_code == 200
        post(daemon, "/event", "{}", authorization="Bearer guess")
        assert "t0ken" not in daemon.logs() and "guess" not in daemon.logs()

    def test_401_comes_before_413_and_404_before_401(self, daemon):
        big = post(daemon, "/events", "{}\n" * 5000)
        assert big.status_code == 401
        assert httpx.get(f"{daemon.url}/nope").status_code == 404


class TestTokenList:
    """``token`` as a list (rotation, SECURITY §11.1): any listed token is accepted."""

    def test_every_listed_token_is_accepted_and_no_other(self, observer_daemon):
        daemon = observer_daemon.start(
            CONFIG.replace("port = {port}", 'port = {port}\ntoken = ["old-one", "new-one"]')
        )
        for token in ("old-one", "new-one"):
            assert post(daemon, "/event", "{}", authorization=f"Bearer {token}").status_code == 200
        for wrong in ("old-one,new-one", "new-on", "Bearer", '["old-one", "new-one"]'):
            assert post(daemon, "/event", "{}", authorization=f"Bearer {wrong}").status_code == 401
        assert post(daemon, "/event", "{}").status_code == 401
        assert len(lines(daemon)) == 2

    @pytest.mark.parametrize(
        ("value", "error"),
        [
            ("[]", "token: Expected `array` of length >= 1"),
            ('["a", ""]', "token[1]: Expected `str` of length >= 1"),
            ('""', "token: Expected `str` of length >= 1"),
        ],
    )
    def test_empty_list_or_empty_token_is_a_config_error(self, observer_daemon, value, error):
        observer_daemon.write_config(CONFIG.replace("port = {port}", f"port = 0\ntoken = {value}"))
        result = observer_daemon.run("check")
        assert result.returncode == 2
        assert f"[sources.http] {error}" in result.stderr


def test_sink_failure_answers_503_with_retry_after_and_acks_nothing(observer_daemon):
    daemon = observer_daemon.start(CONFIG.replace('path = "ops.jsonl"', 'path = "/dev/full"'))
    reply = post(daemon, "/event", "{}")
    assert reply.status_code == 503
    assert int(reply.headers["retry-after"]) >= 1
    assert httpx.get(f"{daemon.url}/health").json()["ops_in_ring"] == 0
    metrics = httpx.get(f"{daemon.url}/metrics").text
    assert 'observer_instance_errors_total{instance="sinks.ops"} 1' in metrics
