"""deploy/observer-core.service: systemd accepts it, rates its sandbox "OK" or better,
and it runs the daemon as the contract says (signals, exit codes, directories).

``systemd-analyze`` runs offline here (no systemd needs to be running). Skipped
without it, unless OBSERVER_REQUIRE_SYSTEMD=1 (CI).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from deploy_kit import CONFIG, UNIT, directives, require_tool

from observer_core.config import parse_toml

BINARY = "/opt/observer-core/bin/observer-core"
# systemd-analyze's ratings, best first; "OK" is the worst one accepted.
RATINGS = ("PERFECT", "SAFE", "OK", "MEDIUM", "EXPOSED", "UNSAFE", "DANGEROUS")
ACCEPTED = RATINGS[: RATINGS.index("OK") + 1]
OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)")


@pytest.fixture
def analyze() -> str:
    return require_tool("systemd-analyze", "OBSERVER_REQUIRE_SYSTEMD")


def with_stub_binary(directory: Path, text: str) -> Path:
    """A copy of the unit ``text`` whose ExecStart runs a stub that exists on this machine.

    ``verify`` checks that the binary exists and is executable; the venv under
    /opt is not installed here. The arguments are kept.
    """
    stub = directory / "observer-core"
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    text, count = re.subn(
        f"^ExecStart={re.escape(BINARY)} ", f"ExecStart={stub} ", text, flags=re.M
    )
    assert count == 1, f"ExecStart does not run {BINARY}"
    unit = directory / UNIT.name  # verify wants the unit's own name
    unit.write_text(text, encoding="utf-8")
    return unit


def verify_problems(analyze: str, unit: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about ``unit`` (it exits 0 on many of them)."""
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    said = (result.stdout + result.stderr).splitlines()
    ours = [line for line in said if unit.name in line or str(unit.parent) in line]
    if result.returncode != 0:
        ours.append(f"exit status {result.returncode}: {said}")
    return ours


def exposure(analyze: str, unit: Path) -> tuple[float, str]:
    """The overall exposure score and rating from ``systemd-analyze security --offline``."""
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = OVERALL.search(result.stdout)
    assert found, f"no overall exposure line:\n{result.stdout}{result.stderr}"
    return float(found.group(1)), found.group(2)


def test_unit_verifies_without_a_complaint(analyze, tmp_path):
    unit = with_stub_binary(tmp_path, UNIT.read_text(encoding="utf-8"))
    assert verify_problems(analyze, unit) == []


def test_verify_catches_a_bad_value(analyze, tmp_path):
    """The check above can fail: a value systemd ignores is reported."""
    broken = UNIT.read_text(encoding="utf-8").replace(
        "ProtectSystem=strict", "ProtectSystem=strictest"
    )
    unit = with_stub_binary(tmp_path, broken)
    problems = verify_problems(analyze, unit)
    assert any("protect system" in line.lower() for line in problems), problems


def test_sandbox_is_rated_ok_or_better(analyze, tmp_path):
    unit = with_stub_binary(tmp_path, UNIT.read_text(encoding="utf-8"))
    score, rating = exposure(analyze, unit)
    assert rating in ACCEPTED, f"exposure {score} {rating}"


def test_an_unhardened_unit_is_rated_worse(analyze, tmp_path):
    """The rating check can fail: the same service without its sandbox is rated badly."""
    bare = f"[Service]\nExecStart={BINARY} run\n"
    score, rating = exposure(analyze, with_stub_binary(tmp_path, bare))
    assert rating not in ACCEPTED, f"exposure {score} {rating}"


def test_unit_runs_the_daemon_as_the_contract_says():
    unit = directives(UNIT.read_text(encoding="utf-8"))
    assert unit["ExecStart"] == [f"{BINARY} run --config /etc/observer-core/observer.toml"]
    # §12.1: SIGHUP reloads (and reopens); logrotate sends SIGUSR1 itself.
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert "2" in " ".join(unit["RestartPreventExitStatus"]).split()  # a config error
    assert unit["StateDirectory"] == unit["LogsDirectory"] == ["observer-core"]
    assert unit["ConfigurationDirectory"] == ["observer-core"]
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():
        assert unit[key] == [value], key


def test_unit_leaves_room_for_the_configured_shutdown_and_connections():
    unit = directives(UNIT.read_text(encoding="utf-8"))
    config = parse_toml(CONFIG.read_text(encoding="utf-8"), {"OBSERVER_TOKEN": "t"})
    stop_secs = int(unit["TimeoutStopSec"][0])
    assert stop_secs > config["observer"]["shutdown_timeout_secs"]
    max_connections = config["sources"]["http"].get("max_connections", 1024)
    assert int(unit["LimitNOFILE"][0]) > 2 * max_connections
