"""``observer-core top`` in a real terminal (tmux at 80x24) and ``observer-core tap``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from operators_kit import event, wait_subscribers

from observer_core.testing import Daemon, DaemonFactory, wait_for

CONFIG = """
[observer]
cycle_secs = 0.5
state_dir = "state"
[sources.http]
port = {port}
token = "tok-123"
[sinks.ops]
plugin = "jsonl"
path = "ops.jsonl"
"""
TOKEN = {"OBSERVER_TOKEN": "tok-123"}
AUTH = {"Authorization": "Bearer tok-123"}


class Tmux:
    """One detached tmux session of a given size running a command."""

    def __init__(self, command: list[str], width: int, height: int, env: dict[str, str]) -> None:
        self.name = f"obs-{uuid.uuid4().hex[:8]}"
        exports = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        started = self._tmux(
            "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
            *exports, " ".join(command),
        )  # fmt: skip
        assert started.returncode == 0, started.stderr

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name).stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.name, *keys)

    def alive(self) -> bool:
        return self._tmux("has-session", "-t", self.name).returncode == 0

    def wait_screen(self, *wanted: str, timeout: float = 15.0) -> str:
        try:
            return wait_for(
                lambda: all(text in (screen := self.screen()) for text in wanted) and screen,
                timeout,
                what=f"the screen to show {wanted}",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{self.screen()}") from None

    def close(self) -> None:
        if self.alive():
            self._tmux("kill-session", "-t", self.name)


@pytest.fixture
def tmux(observer_daemon: DaemonFactory) -> Iterator[type[Tmux]]:
    if shutil.which("tmux") is None:
        if os.environ.get("OBSERVER_REQUIRE_TMUX") == "1":
            pytest.fail("OBSERVER_REQUIRE_TMUX=1 but tmux is not installed")
        pytest.skip("tmux is not installed (apt-get install tmux)")
    sessions: list[Tmux] = []

    class Session(Tmux):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            sessions.append(self)

    try:
        yield Session
    finally:
        for session in sessions:
            session.close()


def _daemon_with_figures(observer_daemon: DaemonFactory) -> Daemon:
    daemon = observer_daemon.start(CONFIG)
    batch = [event(source="alpha") for _ in range(5)] + [
        event(source="beta", endpoint="/v1/pay", success=False, error="card-declined-42")
    ] * 2
    reply = httpx.post(f"{daemon.url}/events", json=batch, headers=AUTH)
    assert reply.status_code == 200
    return daemon


def _top(daemon: Daemon, *extra: str) -> list[str]:
    return [sys.executable, "-m", "observer_core", "top", "--url", daemon.url, *extra]


def test_top_in_an_80x24_terminal_shows_the_figures_and_quits_on_q(
    observer_daemon: DaemonFactory, tmux: type[Tmux]
) -> None:
    daemon = _daemon_with_figures(observer_daemon)
    session = tmux(_top(daemon, "--interval", "0.3"), 80, 24, TOKEN)
    screen = session.wait_screen("alpha", "beta", "card-declined-42", "ring 7/2000", "sinks.ops")
    lines = screen.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    alpha = next(line for line in lines if line.startswith("alpha"))
    assert alpha.split()[-2] == "5"  # total
    beta = next(line for line in lines if line.startswith("beta"))
    assert beta.split()[-2] == "2"
    failure = next(line for line in lines if "card-declined-42" in line)
    assert "/v1/pay" in failure

    # it refreshes: new ops show up without a key pressed
    httpx.post(
        f"{daemon.url}/event",
        json=event(source="gamma"),
        headers=AUTH,
    )
    session.wait_screen("gamma", "ring 8/2000")
    session.keys("q")
    wait_for(lambda: not session.alive(), 10, what="top to quit on q")


def test_top_degrades_in_a_small_terminal_and_quits_on_ctrl_c(
    observer_daemon: DaemonFactory, tmux: type[Tmux]
) -> None:
    daemon = _daemon_with_figures(observer_daemon)
    session = tmux(_top(daemon, "--interval", "0.3"), 40, 10, TOKEN)
    screen = session.wait_screen("observer-core top", "Sources")
    assert "Traceback" not in screen
    assert all(len(line) <= 40 for line in screen.splitlines())
    session.keys("C-c")
    wait_for(lambda: not session.alive(), 10, what="top to quit on Ctrl-C")


def test_top_once_prints_one_plain_frame_and_says_when_the_token_is_missing(
    observer_daemon: DaemonFactory,
) -> None:
    daemon = _daemon_with_figures(observer_daemon)
    result = observer_daemon.run("top", "--once", "--url", daemon.url, env=TOKEN)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout  # plain text, for scripts
    assert "card-declined-42" in result.stdout and "alpha" in result.stdout

    token_file = daemon.directory / "token"
    token_file.write_text("tok-123\n")
    by_file = observer_daemon.run(
        "top", "--once", "--url", daemon.url, "--token-file", str(token_file)
    )
    assert by_file.returncode == 0 and "alpha" in by_file.stdout

    refused = observer_daemon.run("top", "--once", "--url", daemon.url)
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stdout


def test_tap_cli_prints_filtered_records_and_stops_after_limit(
    observer_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = observer_daemon.start(CONFIG)
    # --url defaults from the config in the folder (./observer.toml)
    tap = subprocess.Popen(
        [sys.executable, "-m", "observer_core", "tap", "--source", "beta", "--limit", "2",
         "--format", "json"],
        cwd=daemon.directory, env={**os.environ, **TOKEN},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_subscribers(daemon.url, 1, AUTH)
        batch = [event(source="alpha")] + [
            event(source="beta", input_summary=name) for name in ("b1", "b2", "b3")
        ]
        reply = httpx.post(f"{daemon.url}/events", json=batch, headers=AUTH)
        assert reply.status_code == 200
        out, err = tap.communicate(timeout=15)
    finally:
        tap.kill()
    assert tap.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["record"]["input_summary"] for line in lines] == ["b1", "b2"]

    bad = observer_daemon.run("tap", "--url", daemon.url, "--kind", "nope", env=TOKEN)
    assert bad.returncode == 1
    assert "bad tap parameter 'kind'" in bad.stderr
