"""Config checks of diagnosis, escalation, playbook and the gateway_log sink.

Each plugin's ``sample.toml`` must pass ``observer-core check``; wrong values
must be config errors (exit 2) that name the table and the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

PLUGINS = Path(__file__).parents[3] / "plugins"
SAMPLES = {
    "diagnosis": PLUGINS / "analyzers" / "diagnosis" / "sample.toml",
    "escalation": PLUGINS / "analyzers" / "escalation" / "sample.toml",
    "playbook": PLUGINS / "analyzers" / "playbook" / "sample.toml",
    "gateway_log": PLUGINS / "sinks" / "gateway_log" / "sample.toml",
}


@pytest.mark.parametrize("plugin", SAMPLES)
def test_sample_passes_check(observer_daemon, plugin: str):
    result = observer_daemon.run("check", "--config", str(SAMPLES[plugin]))
    assert result.returncode == 0, result.stderr
    assert f"plugin={plugin}" in result.stdout


WRONG = {
    "prompt-without-errors": (
        '[analyzers.diagnosis]\nprompt = "Diagnose this."',
        "[analyzers.diagnosis] prompt: must contain {errors}",
    ),
    "unknown-provider": (
        '[analyzers.diagnosis]\nprovider = "bard"',
        "provider: unknown provider 'bard' (known: lakehouse, ollama, openai)",
    ),
    "not-a-url": (
        '[analyzers.escalation]\nurl = "localhost:5000"',
        "[analyzers.escalation] url: expected an http:// or https:// URL",
    ),
    "zero-threshold": (
        "[analyzers.escalation]\nthreshold = 0",
        "[analyzers.escalation] threshold: Expected `int` >= 1",
    ),
    "negative-min-group": (
        "[analyzers.playbook]\nmin_group = -1",
        "[analyzers.playbook] min_group: Expected `int` >= 1",
    ),
    "gateway-log-takes-ops": (
        '[sinks.gw]\nplugin = "gateway_log"\naccepts = ["op"]',
        "[sinks.gw] accepts: gateway_log posts log entries",
    ),
    "unknown-key": (
        '[sinks.gw]\nplugin = "gateway_log"\nretries = 3',
        "[sinks.gw] retries: unknown key",
    ),
}


@pytest.mark.parametrize("case", WRONG, ids=list(WRONG))
def test_wrong_values_are_config_errors(observer_daemon, case: str):
    text, message = WRONG[case]
    path = observer_daemon.write_config(text + "\n")
    result = observer_daemon.run("check", "--config", str(path))
    assert result.returncode == 2
    assert message in result.stderr
