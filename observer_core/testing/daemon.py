"""The real daemon as a subprocess: :class:`DaemonFactory` (the ``observer_daemon`` fixture)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .helpers import GiveUp, free_port, wait_for, write_dedented

__all__ = ["Daemon", "DaemonFactory"]


@dataclass
class Daemon:
    """A running ``observer-core run`` process and the folder its config lives in."""

    process: subprocess.Popen[bytes]
    directory: Path
    config_path: Path
    port: int | None
    stderr_path: Path
    stdout_path: Path

    @property
    def url(self) -> str:
        """Base URL of its ``http`` source."""
        assert self.port is not None, "this daemon has no http source"
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until it logs that it runs (and answers ``/health`` when it listens)."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise GiveUp(f"daemon exited with {self.process.returncode}:\n{self.logs()}")
            if "observer-core running" not in self.logs():
                return False
            if self.port is None:
                return True
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200

        wait_for(ready, timeout, what="the daemon to be ready")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """``kill -9``: no chance to flush or save anything."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        wait_for(lambda: text in self.logs(), timeout, what=f"log line containing {text!r}")

    def post_events(self, events: list[dict[str, Any]]) -> None:
        """POST ``events`` to ``/events`` as a JSON array; fail unless all are accepted."""
        reply = httpx.post(f"{self.url}/events", json=events, timeout=10)
        assert reply.status_code == 200, reply.text

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample of ``/metrics`` (None when it is not there)."""
        body = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        sample = f"{name}{{{body}}} " if labels else f"{name} "
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(sample):
                return float(line[len(sample) :])
        return None

    def cycles(self) -> int:
        """How many cycles it has logged so far."""
        found = re.findall(r"\bcycle (\d+): total_ops=", self.logs())
        return int(found[-1]) if found else 0

    def wait_cycles(self, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until ``count`` more cycles have run."""
        target = self.cycles() + count
        wait_for(lambda: self.cycles() >= target, timeout, what=f"cycle {target}")


class DaemonFactory:
    """Writes configs into a temp folder and starts daemons on them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Daemon] = []

    def write_config(self, text: str, name: str = "observer.toml") -> Path:
        return write_dedented(self.directory / name, text)

    def start(
        self,
        config: str | None = None,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        port: int | None = None,
        wait: bool = True,
        name: str = "observer.toml",
    ) -> Daemon:
        """Start ``observer-core run`` on ``config`` (TOML text; dedented).

        ``port`` is where its http source listens (for :attr:`Daemon.url`);
        ``{port}`` in ``config`` is replaced by it, a free one when not given.
        """
        if config is not None and "{port}" in config and port is None:
            port = free_port()
        path = self.directory / name
        if config is not None:
            path = self.write_config(config.replace("{port}", str(port)), name)
        index = len(self.started)
        stderr_path = self.directory / f"daemon{index}.stderr"
        stdout_path = self.directory / f"daemon{index}.stdout"
        environment = {**os.environ, **(env or {})}
        with open(stderr_path, "wb") as err, open(stdout_path, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "observer_core", "run", "--config", str(path), *args],
                cwd=self.directory,
                stdout=out,
                stderr=err,
                env=environment,
            )
        daemon = Daemon(process, self.directory, path, port, stderr_path, stdout_path)
        self.started.append(daemon)
        if wait:
            daemon.wait_ready()
        return daemon

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``observer-core ARGS`` to completion in the temp folder."""
        return subprocess.run(
            [sys.executable, "-m", "observer_core", *args],
            cwd=self.directory,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
        )

    def close(self) -> None:
        for daemon in self.started:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(10)
