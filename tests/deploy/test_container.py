"""deploy/Containerfile: the image builds, runs as a non-root user, passes its own
HEALTHCHECK, takes events with the token on a published port, and stops cleanly.

Needs podman (rootful). The base image is $OBSERVER_CONTAINER_BASE when set (e.g.
docker.io/library/python:3.11-slim where a registry is reachable); otherwise
deploy/base-image.sh builds a Debian one with debootstrap (root). Skipped
without them, unless OBSERVER_REQUIRE_PODMAN=1 (CI).

Two flags are for machines like CI's: podman's default limits raise
RLIMIT_NOFILE/NPROC, which needs CAP_SYS_RESOURCE, so the container gets lower
ones; crun 1.8 refuses a host with hybrid cgroups, so runc runs it when installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from deploy_kit import DEPLOY, ROOT, TOKEN, require_tool

from observer_core.testing import GiveUp, free_port, wait_for

FLAG = "OBSERVER_REQUIRE_PODMAN"
IMAGE = "localhost/observer-core:test"
BASE = "localhost/observer-base:bookworm"
BUILD_SECS = 900

pytestmark = pytest.mark.slow


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS``; fail with its output when ``check`` and it exits non-zero."""
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def run_options() -> list[str]:
    """``podman run`` options this machine needs (see the module docstring)."""
    options = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
    # The HEALTHCHECK's timer needs systemd; the test runs the check itself.
    options += ["--health-interval=disable"]
    if shutil.which("runc"):
        options += ["--runtime", "runc"]
    return options


def base_image() -> str:
    """$OBSERVER_CONTAINER_BASE, or a Debian base built here without a registry."""
    given = os.environ.get("OBSERVER_CONTAINER_BASE")
    if given:
        return given
    require_tool("debootstrap", FLAG)
    if os.geteuid() != 0:
        if os.environ.get(FLAG) == "1":
            pytest.fail(f"{FLAG}=1 but deploy/base-image.sh needs root")
        pytest.skip("deploy/base-image.sh needs root (or set OBSERVER_CONTAINER_BASE)")
    script = subprocess.run(
        ["bash", str(DEPLOY / "base-image.sh"), BASE],
        capture_output=True,
        text=True,
        timeout=BUILD_SECS,
    )
    assert script.returncode == 0, script.stderr[-4000:]
    return BASE


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from deploy/Containerfile and this work tree."""
    require_tool("podman", FLAG)
    podman(
        "build",
        "--isolation=chroot",  # no OCI runtime needed to build
        "--format=docker",  # keeps the HEALTHCHECK
        "--network=host",
        f"--build-arg=BASE={base_image()}",
        f"--file={DEPLOY / 'Containerfile'}",
        f"--tag={IMAGE}",
        str(ROOT),
        timeout=BUILD_SECS,
    )
    return IMAGE


@pytest.fixture
def container(image: str) -> Iterator[tuple[str, str]]:
    """A running container of the image (name, URL of its published port); removed after."""
    name = f"observer-core-test-{os.getpid()}"
    port = free_port()
    closed = "http://127.0.0.1:9"  # nothing listens: the gateway and LLM stay down
    podman("rm", "--force", "--ignore", name)
    podman(
        "run",
        "--detach",
        f"--name={name}",
        *run_options(),
        # Published from the container's 0.0.0.0: reachable only if it binds there.
        f"--publish=127.0.0.1:{port}:3800",
        f"--env=OBSERVER_TOKEN={TOKEN}",
        f"--env=GATEWAY_URL={closed}",
        f"--env=LAKEHOUSE_URL={closed}",
        f"--env=LH_LLM_TEAM_URL={closed}",
        image,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            state = podman("inspect", "--format={{.State.Running}}", name).stdout.strip()
            if state != "true":
                logs = podman("logs", name, check=False)
                raise GiveUp(f"the container stopped:\n{logs.stdout}{logs.stderr}")
            return httpx.get(f"{url}/health", timeout=2).status_code == 200

        wait_for(healthy, timeout=60, interval=0.2, what="the container's /health")
        yield name, url
    finally:
        podman("rm", "--force", "--time=5", name, check=False)


def test_container_serves_with_the_token_as_a_non_root_user(container):
    name, url = container
    assert podman("healthcheck", "run", name, check=False).returncode == 0  # its HEALTHCHECK
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"

    event = {"endpoint": "/in-a-container", "success": True}
    assert httpx.post(f"{url}/event", json=event, timeout=10).status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    reply = httpx.post(f"{url}/event", json=event, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    written = podman("exec", name, "cat", "/var/log/observer-core/ops.jsonl").stdout
    assert "/in-a-container" in written

    podman("stop", "--time=30", name, timeout=60)  # SIGTERM: flush, save, exit 0
    assert podman("inspect", "--format={{.State.ExitCode}}", name).stdout.strip() == "0"


def test_container_refuses_to_start_without_a_token(image):
    """Bound to 0.0.0.0 in there, it must not run open (§11.1): exit 2, a config error."""
    result = podman("run", "--rm", *run_options(), image, check=False, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "OBSERVER_TOKEN is not set" in result.stderr
