"""The README's way of pointing an agent at the otlp source works as shown: its ``agent.py``
block, run with the environment its shell line sets (the port changed to the test's)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from otlp_helpers import OtlpDaemon

from observer_core.testing import wait_for

README = Path(__file__).resolve().parents[4] / "plugins" / "sources" / "otlp" / "README.md"


def block_after(marker: str, text: str) -> str:
    """The fenced block that follows ``marker``."""
    found = re.search(re.escape(marker) + r"\n```\w*\n(.*?)\n```", text, re.S)
    assert found, f"no block after {marker!r} in {README}"
    return found.group(1)


def shell_line(text: str) -> list[str]:
    """The README's command line that runs ``agent.py``."""
    [line] = [line for line in text.splitlines() if line.endswith("python agent.py")]
    return shlex.split(line)


def test_the_readme_agent_reaches_the_otlp_source(otlp: OtlpDaemon, tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    (tmp_path / "agent.py").write_text(block_after("<!-- snippet: agent.py -->", text))
    *assignments, program, script = shell_line(text)
    assert (program, script) == ("python", "agent.py")
    env = dict(assignment.split("=", 1) for assignment in assignments)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.url  # the same, on the test's free port
    done = subprocess.run(
        [sys.executable, script],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [op] = wait_for(otlp.ops, timeout=10, what="the agent's op")
    assert op["endpoint"] == "chat gpt-4o-mini"
    assert op["source"] == "my-agent"
    assert op["output_summary"] == "12 → 30 tokens"
