"""deploy/logrotate/observer-core rotates the daemon's sink files and nothing is lost.

The real logrotate runs the shipped file, with two substitutions: the path is a
temporary folder, and ``systemctl kill ... observer-core.service`` (no systemd
here) becomes ``kill`` of the daemon's pid with the same signal. Skipped
without logrotate, unless OBSERVER_REQUIRE_SYSTEMD=1 (CI).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from deploy_kit import DEPLOY, TOKEN, require_tool

from observer_core.testing import Daemon, GiveUp, wait_for

LOGROTATE = DEPLOY / "logrotate" / "observer-core"
SYSTEMCTL_KILL = re.compile(
    r"systemctl kill --kill-whom=main --signal=(\w+) observer-core\.service"
)


def shipped_signal() -> str:
    """The signal the shipped postrotate sends (without the SIG prefix)."""
    found = SYSTEMCTL_KILL.search(LOGROTATE.read_text(encoding="utf-8"))
    assert found, "postrotate does not signal observer-core.service's main process"
    return found.group(1)


def test_postrotate_sends_sigusr1_as_the_contract_says():
    assert shipped_signal() == "USR1"  # §12.1: reopen only, no config reload


@pytest.mark.parametrize(
    "signame",
    [
        pytest.param(shipped_signal(), id="shipped"),
        pytest.param("HUP", id="SIGHUP"),  # ExecReload=; reopens today
    ],
)
def test_rotation_then_reopen_loses_nothing(deployed, tmp_path, signame):
    logrotate = require_tool("logrotate", "OBSERVER_REQUIRE_SYSTEMD")
    daemon = deployed.start()
    folder = deployed.directory / "log"
    text = LOGROTATE.read_text(encoding="utf-8").replace("/var/log/observer-core", str(folder))
    text = SYSTEMCTL_KILL.sub(f"kill -{signame} {daemon.process.pid}", text)
    config = tmp_path / "logrotate.conf"
    config.write_text(text, encoding="utf-8")

    sent = [post(daemon, f"/before/{n}") for n in range(3)]
    rotate = [logrotate, "--force", "--state", str(tmp_path / "logrotate.state"), str(config)]
    done = subprocess.run(rotate, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ops = folder / "ops.jsonl"
    rotated = folder / "ops.jsonl.1"  # delaycompress: the newest rotation stays plain

    def reopened() -> bool:
        sent.append(post(daemon, f"/after/{len(sent)}"))
        return ops.is_file()

    wait_for(reopened, what="a new ops.jsonl")
    written = endpoints(rotated) + endpoints(ops)
    assert sorted(written) == sorted(sent)  # every acknowledged event, once
    assert endpoints(ops) and all(e.startswith("/after/") for e in endpoints(ops))
    assert daemon.stop() == 0


def post(daemon: Daemon, endpoint: str) -> str:
    """POST one event with the token; return its endpoint once acknowledged."""
    if daemon.process.poll() is not None:
        raise GiveUp(f"the daemon ended ({daemon.process.returncode}):\n{daemon.logs()}")
    reply = httpx.post(
        f"{daemon.url}/event",
        json={"endpoint": endpoint},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return endpoint


def endpoints(path: Path) -> list[str]:
    """The endpoints of the ops in a jsonl file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["endpoint"] for line in lines]
