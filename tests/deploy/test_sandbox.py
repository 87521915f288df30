"""The daemon works under the unit's MemoryDenyWriteExecute=yes.

systemd enforces it with a seccomp filter (no mapping both writable and
executable, no mapping made executable later); Linux 6.3+ offers the same
rule as ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``, kept across
``execve``. The real daemon (CPython, uvloop, httptools, msgspec) runs under it
here, takes an event and writes it. Skipped on an older kernel, unless
OBSERVER_REQUIRE_SYSTEMD=1 (CI).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from deploy_kit import TOKEN

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

# Runs argv[1:] with the rule set: the wrapper the daemon is started through.
WRAPPER = textwrap.dedent(
    f"""\
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_MDWE): " + os.strerror(ctypes.get_errno()))
    os.execv(sys.argv[1], sys.argv[1:])
    """
)


@pytest.fixture
def mdwe(tmp_path: Path) -> list[str]:
    """The command prefix that runs a program with memory-deny-write-execute."""
    if not _kernel_has_mdwe():
        message = "this kernel has no PR_SET_MDWE (Linux 6.3+)"
        if os.environ.get("OBSERVER_REQUIRE_SYSTEMD") == "1":
            pytest.fail(f"OBSERVER_REQUIRE_SYSTEMD=1 but {message}")
        pytest.skip(message)
    wrapper = tmp_path / "mdwe.py"
    wrapper.write_text(WRAPPER, encoding="utf-8")
    return [sys.executable, str(wrapper)]


def _kernel_has_mdwe() -> bool:
    """Whether PR_SET_MDWE exists, asked in a child (the rule cannot be undone)."""
    probe = "import ctypes; ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) >= 0 or exit(1)"
    return subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


def test_the_rule_refuses_writable_executable_memory(mdwe):
    """The check below can fail: under the wrapper, a W+X mapping is refused."""
    attempt = textwrap.dedent(
        """\
        import mmap, sys
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except OSError as error:
            sys.exit(error.errno)
        """
    )
    result = subprocess.run([*mdwe, sys.executable, "-c", attempt], timeout=30)
    assert result.returncode in (errno.EACCES, errno.EPERM)


def test_daemon_runs_under_memory_deny_write_execute(deployed, mdwe):
    import uvloop  # noqa: F401  (a dependency: the daemon runs on it, under the rule too)

    daemon = deployed.start(prefix=mdwe)
    reply = httpx.post(
        f"{daemon.url}/events",
        json=[{"endpoint": "/mdwe", "success": True}] * 3,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert reply.json() == {"accepted": 3}
    assert (deployed.directory / "log" / "ops.jsonl").read_text(encoding="utf-8").count(
        "/mdwe"
    ) == 3
    assert daemon.stop() == 0
