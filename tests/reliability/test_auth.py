"""Token auth: compared in constant time, never logged, and only /health is open.

With ``token`` set on the ``http`` source, every route but ``/health`` needs
``Authorization: Bearer <token>``. The comparison goes through
``hmac.compare_digest`` (asserted with a spy), and a timing measurement over
loopback shows no dependence on how much of a guess is right (a generous bound:
loopback noise hides nanoseconds, so this catches gross leaks only).
"""

from __future__ import annotations

import hmac
import statistics
import time
from typing import Any

import httpx
import pytest
from reliability_kit import exchange, record

from observer_core.testing import Daemon, DaemonFactory, EngineFactory, free_port

TOKEN = "s3cret-" + "k" * 57  # 64 characters
CONFIG = f"""
[observer]
cycle_secs = 0.2
[sources.http]
port = {{port}}
token = "{TOKEN}"
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
"""
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
PATHS = [
    "/health",
    "/ready",
    "/stats",
    "/metrics",
    "/tap",
    "/event",
    "/events",
    "/",
    "/nope",
    "/health/x",
]
WRONG = [
    None,
    "",
    "Bearer",
    "Bearer  ,",
    f"Basic {TOKEN}",
    f"Bearer{TOKEN}",
    f"Bearer {TOKEN} x",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN.upper()}",
    TOKEN,
]


@pytest.fixture
def daemon(observer_daemon: DaemonFactory) -> Daemon:
    return observer_daemon.start(CONFIG, args=("--log-level", "debug"))


def test_only_health_is_open(daemon: Daemon) -> None:
    opened = []
    with httpx.Client(base_url=daemon.url, timeout=5) as client:
        for method in METHODS:
            for path in PATHS:
                for header in WRONG:
                    headers = {} if header is None else {"Authorization": header}
                    reply = client.request(method, path, content=b"{}", headers=headers)
                    if reply.status_code < 400:
                        opened.append((method, path, reply.status_code))
                    elif method != "HEAD":
                        assert set(reply.json()) == {"error"}, reply.text
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/event", content=b"{}", headers=right).status_code == 200
        assert client.get("/stats", headers=right).json()["total"] == 1
    # §11.1: /health, /ready and the status page's HTML (which holds no data) stay open.
    open_paths = {path for _, path, _ in opened}
    assert open_paths <= {"/health", "/ready", "/"} and "/health" in open_paths
    assert {method for method, _, _ in opened} == {"GET", "HEAD"}
    record(
        "auth",
        requests_without_the_token=len(METHODS) * len(PATHS) * len(WRONG),
        open_routes=len(open_paths),
    )


def test_the_token_is_never_logged_even_at_debug_level(daemon: Daemon) -> None:
    assert daemon.port is not None
    with httpx.Client(base_url=daemon.url, timeout=5) as client:
        for header in (f"Bearer {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x"):
            client.post("/event", content=b"{", headers={"Authorization": header})
            client.get("/nope", headers={"Authorization": header})
            client.post("/events", content=b"{}\n" * 10, headers={"Authorization": header})
    malformed = f"POST /event HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nBad Header\r\n\r\n"
    exchange(daemon.port, malformed.encode())
    assert daemon.stop() == 0
    everything = daemon.logs() + daemon.stdout()
    for secret in (TOKEN, TOKEN[:-1], TOKEN[7:]):
        assert secret not in everything
    for path in daemon.directory.rglob("*"):
        if path.is_file() and path != daemon.config_path:
            assert TOKEN[7:].encode() not in path.read_bytes(), f"the token is in {path}"


def test_check_resolved_masks_the_token(observer_daemon: DaemonFactory) -> None:
    observer_daemon.write_config(CONFIG.replace("{port}", str(free_port())))
    result = observer_daemon.run("check", "--config", "observer.toml", "--resolved")
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout and TOKEN[7:] not in result.stdout
    assert 'token = "********"' in result.stdout


def test_an_empty_token_is_a_config_error_not_open_access(observer_daemon: DaemonFactory) -> None:
    config = CONFIG.replace(f'token = "{TOKEN}"', 'token = "${OBSERVER_TOKEN:-}"')
    observer_daemon.write_config(config.replace("{port}", str(free_port())))
    result = observer_daemon.run(
        "run", "--config", "observer.toml", env={"OBSERVER_TOKEN": ""}, timeout=20
    )
    assert result.returncode == 2, result.stderr
    assert "[sources.http] token" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_every_protected_request_goes_through_compare_digest(
    observer_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(given: Any, expected: Any) -> bool:
        calls.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    port = free_port()
    async with (
        observer_engine.start(CONFIG.replace("{port}", str(port)).replace("0.2", "3600")),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client,
    ):
        guesses = [f"Bearer {TOKEN}", f"Bearer {TOKEN[:-1]}", "Bearer x"]
        for guess in guesses:
            await client.get("/stats", headers={"Authorization": guess})
        await client.get("/stats")
        await client.get("/health")
    expected = TOKEN.encode()
    tokens = [guess.removeprefix("Bearer ").encode() for guess in guesses]
    assert calls == [(token, expected) for token in tokens] + [(b"", expected)]


def _median_ms(client: httpx.Client, header: str, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        client.get("/stats", headers={"Authorization": header})
        times.append((time.perf_counter() - started) * 1000)
    return times


def test_response_time_does_not_depend_on_how_much_of_the_token_matches(daemon: Daemon) -> None:
    near = f"Bearer {TOKEN[:-1]}x"  # all but the last byte right
    far = "Bearer " + "x" * len(TOKEN)  # nothing right after the scheme
    timings: dict[str, list[float]] = {near: [], far: []}
    with httpx.Client(base_url=daemon.url, timeout=5) as client:
        for _ in range(20):  # interleaved rounds, so drift hits both alike
            for header, kept in timings.items():
                kept += _median_ms(client, header, 50)
    near_ms, far_ms = (statistics.median(timings[header]) for header in (near, far))
    difference = abs(near_ms - far_ms)
    assert difference < 0.25 * max(near_ms, far_ms) + 0.05, (near_ms, far_ms)
    record(
        "auth",
        timing_samples_per_guess=len(timings[near]),
        median_ms_near_guess=round(near_ms, 4),
        median_ms_far_guess=round(far_ms, 4),
        median_difference_us=round(difference * 1000, 1),
    )
