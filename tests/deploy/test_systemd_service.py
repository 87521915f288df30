"""deploy/observer-core.service under a real systemd: the daemon starts in its sandbox,
takes events with the token, reloads on SIGHUP, restarts after a crash but not
after a config error, and stops cleanly.

systemd runs as PID 1 of a podman container (systemd.Containerfile) holding the
venv of deploy/Containerfile's image and the unit, config and env file as
deploy/README.md installs them. Needs podman (see podman_kit.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from podman_kit import base_image, build, podman, run_options

from observer_core.testing import GiveUp, wait_for

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
SYSTEMD_IMAGE = "localhost/observer-core-systemd:test"
TOKEN = "test-token"  # in systemd.Containerfile's observer.env
ENV_FILE = "/etc/observer-core/observer.env"
PYTHON = "/opt/observer-core/bin/python"
# Runs inside: one request to the daemon, printing the status and the body.
REQUEST = """\
import json, sys, httpx
method, path, token, body = sys.argv[1:5]
headers = {"Authorization": "Bearer " + token} if token else {}
reply = httpx.request(method, "http://127.0.0.1:3800" + path, headers=headers,
                      content=body or None, timeout=10)
print(json.dumps([reply.status_code, reply.text]))
"""


class Machine:
    """The running container: commands in it, the unit's properties, requests to the daemon."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *args, check=False, timeout=timeout)

    def prop(self, name: str) -> str:
        """A property of observer-core.service (``systemctl show``)."""
        return self.run("systemctl", "show", "-p", name, "--value", "observer-core").stdout.strip()

    def request(self, method: str, path: str, token: str = "", body: str = "") -> tuple[int, str]:
        done = self.run(PYTHON, "-c", REQUEST, method, path, token, body)
        if done.returncode != 0:
            raise AssertionError(f"request failed: {done.stderr}")
        status, text = json.loads(done.stdout)
        return int(status), str(text)

    def wait_active(self, timeout: float = 90) -> None:
        """Until the unit is active and the daemon answers /health."""

        def up() -> bool:
            if self.prop("ActiveState") == "failed":
                journal = self.run("journalctl", "-u", "observer-core", "--no-pager", "-n", "30")
                raise GiveUp(f"observer-core.service failed:\n{journal.stdout}")
            return self.prop("ActiveState") == "active" and self.request("GET", "/health")[0] == 200

        wait_for(up, timeout=timeout, interval=0.5, what="observer-core.service to be active")


@pytest.fixture(scope="module")
def machine(image: str) -> Iterator[Machine]:
    tag = build(SYSTEMD_IMAGE, HERE / "systemd.Containerfile", BASE=base_image(), APP=image)
    name = f"observer-core-systemd-{os.getpid()}"
    podman("rm", "--force", "--ignore", name)
    podman("run", "--detach", f"--name={name}", "--systemd=always", *run_options(), tag)
    try:
        machine = Machine(name)
        machine.wait_active()
        yield machine
    finally:
        podman("rm", "--force", "--time=5", name, check=False)


def test_service_runs_sandboxed_and_takes_events(machine):
    status = machine.run("cat", f"/proc/{machine.prop('MainPID')}/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # SystemCallFilter=
    assert int(fields["CapEff"].strip(), 16) == 0  # CapabilityBoundingSet=
    assert fields["Uid"].split()[0] != "0"  # DynamicUser=

    event = json.dumps({"endpoint": "/under-systemd", "success": True})
    assert machine.request("POST", "/event", body=event)[0] == 401
    assert machine.request("POST", "/event", TOKEN, event)[0] == 200
    ops = "/var/log/observer-core/ops.jsonl"  # LogsDirectory=
    assert "/under-systemd" in machine.run("cat", ops).stdout
    assert machine.run("stat", "-c", "%a", ops).stdout.strip() == "600"  # UMask=0077


def test_reload_signals_the_daemon_which_keeps_running(machine):
    pid = machine.prop("MainPID")
    for _ in range(2):
        reload = machine.run("systemctl", "reload", "observer-core")
        assert reload.returncode == 0, reload.stderr
    assert machine.prop("MainPID") == pid
    assert machine.prop("ActiveState") == "active"
    journal = machine.run("journalctl", "-u", "observer-core", "--no-pager").stdout
    assert "SIGHUP" in journal


def test_a_crash_is_restarted(machine):
    pid, restarts = machine.prop("MainPID"), int(machine.prop("NRestarts"))
    machine.run("systemctl", "kill", "--signal=KILL", "observer-core")
    wait_for(
        lambda: (
            machine.prop("MainPID") not in ("0", pid)
            and int(machine.prop("NRestarts")) == restarts + 1
        ),
        timeout=60,
        interval=0.5,
        what="systemd to restart the daemon",
    )
    machine.wait_active()


def test_a_config_error_is_not_restarted(machine):
    machine.run("cp", ENV_FILE, f"{ENV_FILE}.keep")
    machine.run("sed", "-i", "/^OBSERVER_TOKEN=/d", ENV_FILE)
    try:
        machine.run("systemctl", "restart", "observer-core")
        wait_for(lambda: machine.prop("ActiveState") == "failed", timeout=60, interval=0.5)
        assert machine.prop("ExecMainStatus") == "2"
        assert machine.prop("SubState") == "failed"  # not auto-restart: RestartPreventExitStatus
    finally:
        machine.run("mv", f"{ENV_FILE}.keep", ENV_FILE)
    machine.run("systemctl", "reset-failed", "observer-core")
    machine.run("systemctl", "start", "observer-core")
    machine.wait_active()


def test_stop_flushes_and_exits_zero(machine):
    stop = machine.run("systemctl", "stop", "observer-core")
    assert stop.returncode == 0, stop.stderr
    assert machine.prop("ActiveState") == "inactive"
    assert machine.prop("ExecMainStatus") == "0"
    assert machine.prop("Result") == "success"
