"""Podman for the tests of deploy/: build the images, run containers on this machine.

The base image is $OBSERVER_CONTAINER_BASE when set (e.g.
docker.io/library/python:3.11-slim where a registry is reachable); otherwise
deploy/base-image.sh builds a Debian one with debootstrap (root). Without
podman the tests are skipped, unless OBSERVER_REQUIRE_PODMAN=1 (CI).

Two run options are for machines like CI's: podman's default limits raise
RLIMIT_NOFILE/NPROC, which needs CAP_SYS_RESOURCE, so containers get lower
ones; crun 1.8 refuses a host with hybrid cgroups, so runc runs them when
installed. Builds use ``--isolation=chroot``, which needs no OCI runtime.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_kit import DEPLOY, ROOT, require_tool

FLAG = "OBSERVER_REQUIRE_PODMAN"
IMAGE = "localhost/observer-core:test"
BASE = "localhost/observer-base:bookworm"
BUILD_SECS = 900


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


def build(tag: str, containerfile: Path, **build_args: str) -> str:
    """``podman build`` ``containerfile`` with the repository as context; returns ``tag``."""
    require_tool("podman", FLAG)
    args = [f"--build-arg={key}={value}" for key, value in build_args.items()]
    previous = podman("image", "inspect", "--format={{.Id}}", tag, check=False).stdout.strip()
    podman(
        "build",
        "--isolation=chroot",  # no OCI runtime needed to build
        "--format=docker",  # keeps the HEALTHCHECK
        "--network=host",
        *args,
        f"--file={containerfile}",
        f"--tag={tag}",
        str(ROOT),
        timeout=BUILD_SECS,
    )
    # The image this build replaced under ``tag``, if it did: else each run leaves ~340 MB.
    built = podman("image", "inspect", "--format={{.Id}}", tag, check=False).stdout.strip()
    if previous and previous != built:
        podman("image", "rm", previous, check=False)
    return tag
