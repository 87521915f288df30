"""deploy/Containerfile: the image builds, runs as a non-root user, passes its own
HEALTHCHECK, takes events with the token on a published port, and stops cleanly.

Needs podman; see podman_kit.py for the base image and this machine's options.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
from deploy_kit import TOKEN
from podman_kit import podman, run_options

from observer_core.testing import GiveUp, free_port, wait_for

pytestmark = pytest.mark.slow


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
