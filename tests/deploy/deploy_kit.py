"""Helpers for the tests of deploy/: where its files are, and the tools they need."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from observer_core.testing import Daemon, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "observer-core.service"
CONFIG = DEPLOY / "observer.toml"


def require_tool(name: str, flag: str) -> str:
    """The path of the command ``name``; skip without it, fail instead when ``$flag`` is 1."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed"
    if os.environ.get(flag) == "1":
        pytest.fail(f"{flag}=1 but {message}")
    pytest.skip(f"{message} (CI installs it and sets {flag}=1)")


def directives(unit_text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, by key, in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for raw in unit_text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, equals, value = line.partition("=")
        assert equals, f"not a Key=value line: {raw!r}"
        found.setdefault(key.strip(), []).append(value.strip())
    return found


TOKEN = "deploy-test-token"


class DeployedDaemons:
    """Start the real daemon on deploy/observer.toml, with the environment the unit gives it.

    The config is copied to ``directory/etc``; ``STATE_DIRECTORY`` and
    ``LOGS_DIRECTORY`` (what systemd sets for ``StateDirectory=`` and
    ``LogsDirectory=``) point into ``directory``; every downstream URL points at
    a closed port. ``prefix`` runs the daemon through a wrapper command.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Daemon] = []

    def environment(self, **extra: str) -> dict[str, str]:
        """The daemon's environment: this one, the unit's directories, a token, a free port."""
        closed = f"http://127.0.0.1:{free_port()}"
        return {
            **os.environ,
            "STATE_DIRECTORY": str(self.directory / "state"),
            "LOGS_DIRECTORY": str(self.directory / "log"),
            "OBSERVER_TOKEN": TOKEN,
            "OBSERVER_PORT": str(free_port()),
            "GATEWAY_URL": closed,
            "LAKEHOUSE_URL": closed,
            "LH_LLM_TEAM_URL": closed,
            "OVERSEER_CORRECTIONS_PATH": str(self.directory / "corrections.jsonl"),
            **extra,
        }

    def config(self) -> Path:
        """deploy/observer.toml, copied where the daemon reads it."""
        path = self.directory / "etc" / "observer.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CONFIG, path)
        return path

    def start(self, prefix: Sequence[str] = (), **extra: str) -> Daemon:
        """``observer-core run`` on the copied config; returns once it answers /health."""
        env = self.environment(**extra)
        config = self.config()
        index = len(self.started)
        stderr_path = self.directory / f"daemon{index}.stderr"
        stdout_path = self.directory / f"daemon{index}.stdout"
        command = [*prefix, sys.executable, "-m", "observer_core", "run", "--config", str(config)]
        with open(stderr_path, "wb") as err, open(stdout_path, "wb") as out:
            process = subprocess.Popen(command, cwd=self.directory, stdout=out, stderr=err, env=env)
        port = int(env["OBSERVER_PORT"])
        daemon = Daemon(process, self.directory, config, port, stderr_path, stdout_path)
        self.started.append(daemon)
        daemon.wait_ready()
        return daemon

    def close(self) -> None:
        """Kill every daemon still running."""
        for daemon in self.started:
            daemon.kill()
