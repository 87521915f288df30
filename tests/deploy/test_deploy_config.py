"""deploy/observer.toml, the config of the service and the container: the real daemon
writes where the unit's directories are, and nobody gets in without the token."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from deploy_kit import TOKEN, DeployedDaemons

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_daemon_writes_under_the_units_directories_and_wants_the_token(deployed):
    daemon = deployed.start()
    event = {"endpoint": "/search", "success": False, "error": "timeout", "sig_hash": "a1"}

    assert httpx.post(f"{daemon.url}/event", json=event, timeout=10).status_code == 401
    assert httpx.get(f"{daemon.url}/health", timeout=10).status_code == 200  # the probes' path
    reply = httpx.post(f"{daemon.url}/event", json=event, headers=AUTH, timeout=10)
    assert reply.status_code == 200, reply.text

    ops = deployed.directory / "log" / "ops.jsonl"  # $LOGS_DIRECTORY
    [row] = [json.loads(line) for line in ops.read_text(encoding="utf-8").splitlines()]
    assert row["endpoint"] == "/search"
    assert (deployed.directory / "state" / "observer.lock").is_file()  # $STATE_DIRECTORY
    assert daemon.stop() == 0


def test_without_a_token_it_is_a_config_error(tmp_path):
    """Exit 2, which the unit's RestartPreventExitStatus= does not restart on."""
    daemons = DeployedDaemons(tmp_path)
    env = daemons.environment()
    del env["OBSERVER_TOKEN"]
    command = [sys.executable, "-m", "observer_core", "run", "--config", str(daemons.config())]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "OBSERVER_TOKEN is not set" in result.stderr
