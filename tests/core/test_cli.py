"""The observer-core command line, run as a real subprocess."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import msgspec
import pytest

from observer_core.plugins import load_registry
from observer_core.testing import daemon_config, free_port

MINIMAL = daemon_config()


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["plugins"], ["init"]])
def test_every_command_has_help(observer_daemon, command):
    result = observer_daemon.run(*command, "--help")
    assert result.returncode == 0
    assert "usage: observer-core" in result.stdout


def test_version(observer_daemon):
    result = observer_daemon.run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("observer-core ")


def test_check_prints_the_pipeline(observer_daemon):
    observer_daemon.write_config(MINIMAL.replace("{port}", "3999"))
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "http" in result.stdout and "plugin=jsonl from observer-core" in result.stdout


def test_check_resolved_is_toml_with_defaults(observer_daemon):
    observer_daemon.write_config(MINIMAL.replace("{port}", "3999"))
    result = observer_daemon.run("check", "--config", "observer.toml", "--resolved")
    assert result.returncode == 0, result.stderr
    resolved = tomllib.loads(result.stdout)
    assert resolved["observer"]["ring_size"] == 2000
    assert resolved["sources"]["http"]["max_body_bytes"] == 1048576
    assert resolved["sinks"]["ops"]["fsync"] == "batch"


def test_default_config_path_comes_from_env(observer_daemon):
    observer_daemon.write_config(MINIMAL.replace("{port}", "3999"), name="elsewhere.toml")
    result = observer_daemon.run("check", env={"OBSERVER_CONFIG": "elsewhere.toml"})
    assert result.returncode == 0, result.stderr
    assert "elsewhere.toml: valid" in result.stdout


@pytest.mark.parametrize("command", ["check", "run"])
def test_config_error_exits_2_with_one_line_and_no_traceback(observer_daemon, command):
    observer_daemon.write_config('[sources.http]\nport = "x"\n')
    result = observer_daemon.run(command, "--config", "observer.toml")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "[sources.http] port" in result.stderr
    assert not (observer_daemon.directory / "data").exists()  # nothing started


def test_missing_config_file_exits_2(observer_daemon):
    result = observer_daemon.run("check", "--config", "nope.toml")
    assert result.returncode == 2
    assert "nope.toml" in result.stderr and "Traceback" not in result.stderr


def test_init_writes_a_config_that_passes_check_and_refuses_to_overwrite(observer_daemon):
    first = observer_daemon.run("init", "fresh.toml")
    assert first.returncode == 0
    written = (observer_daemon.directory / "fresh.toml").read_text()
    assert written.lstrip().startswith("#")  # documented
    check = observer_daemon.run("check", "--config", "fresh.toml")
    assert check.returncode == 0, check.stderr
    again = observer_daemon.run("init", "fresh.toml")
    assert again.returncode == 1 and "--force" in again.stderr
    forced = observer_daemon.run("init", "fresh.toml", "--force")
    assert forced.returncode == 0


def test_shipped_config_is_what_init_writes():
    root = Path(__file__).resolve().parents[2]
    assert (root / "observer.toml").read_text() == (
        root / "observer_core" / "default.toml"
    ).read_text()


def test_shipped_config_passes_check(observer_daemon):
    root = Path(__file__).resolve().parents[2]
    result = observer_daemon.run("check", "--config", str(root / "observer.toml"))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


def test_plugins_lists_builtins_by_kind_with_distribution(observer_daemon):
    result = observer_daemon.run("plugins")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "sources:" in lines and "sinks:" in lines
    assert any(line.split()[:2] == ["http", "observer-core"] for line in lines)
    assert any(line.split()[:2] == ["jsonl", "observer-core"] for line in lines)


def test_plugins_name_shows_config_keys(observer_daemon):
    result = observer_daemon.run("plugins", "jsonl")
    assert result.returncode == 0
    assert "fsync_interval_ms" in result.stdout and "(required)" in result.stdout


def test_second_daemon_on_same_state_dir_exits_1_naming_the_holder(observer_daemon):
    first = observer_daemon.start(MINIMAL)
    observer_daemon.write_config(MINIMAL.replace("{port}", str(free_port())), name="second.toml")
    result = observer_daemon.run("run", "--config", "second.toml", timeout=30)
    assert result.returncode == 1
    assert f"pid {first.process.pid}" in result.stderr
    assert "Traceback" not in result.stderr
    assert first.stop() == 0


def test_taken_port_exits_1_naming_the_instance(observer_daemon):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        observer_daemon.write_config(MINIMAL.replace("{port}", str(port)))
        result = observer_daemon.run("run", "--config", "observer.toml", timeout=30)
    assert result.returncode == 1
    assert "[sources.http] cannot start" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_sink_path_exits_1(observer_daemon, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    observer_daemon.write_config('[sinks.ops]\nplugin = "jsonl"\npath = "file/ops.jsonl"\n')
    result = observer_daemon.run("run", "--config", "observer.toml", timeout=30)
    assert result.returncode == 1
    assert "[sinks.ops] cannot start" in result.stderr


def test_json_logs(observer_daemon):
    import json

    observer_daemon.write_config('[sinks.ops]\nplugin = "jsonl"\npath = "ops.jsonl"\n')
    result = observer_daemon.run(
        "run", "--once", "--log-format", "json", "--config", "observer.toml"
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert entries and all(
        {"ts", "level", "logger", "message"} <= entry.keys() for entry in entries
    )


def test_once_starts_no_listener_and_exits_0(observer_daemon):
    port = free_port()
    observer_daemon.write_config(MINIMAL.replace("{port}", str(port)))
    result = observer_daemon.run("run", "--once", "--config", "observer.toml")
    assert result.returncode == 0, result.stderr
    assert "listening" not in result.stderr
    assert "not starting push source sources.http" in result.stderr
    assert "cycle 1:" in result.stderr


# -- what a newcomer tripped on (issue 25) ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["init", "."], 1, "is a directory"),
        (["init", ".", "--force"], 1, "is a directory"),
        (["init", "blocker/observer.toml"], 1, "cannot write blocker/observer.toml"),
        (["init", "/proc/nope/observer.toml"], 1, "cannot write /proc/nope/observer.toml"),
        (["init", "/dev/full", "--force"], 1, "cannot write /dev/full"),
        (["check", "--config", "."], 2, "cannot read"),
        (["check", "--config", "blocker/observer.toml"], 2, "blocker/observer.toml"),
        (["run", "--config", "."], 2, "cannot read"),
        (["run", "--once", "--config", "/proc/nope/observer.toml"], 2, "no such config file"),
        (["plugins", "/proc/nope"], 1, "no plugin named '/proc/nope'"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_an_impossible_path_is_one_line_and_a_failure(observer_daemon, args, code, says):
    (observer_daemon.directory / "blocker").write_text("a file where a folder should be")
    result = observer_daemon.run(*args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr


def test_an_unusable_state_dir_exits_1_without_a_traceback(observer_daemon):
    (observer_daemon.directory / "blocker").write_text("")
    observer_daemon.write_config('[observer]\nstate_dir = "blocker/state"\n')
    result = observer_daemon.run("run", "--once", "--config", "observer.toml")
    assert result.returncode == 1
    assert "cannot use state_dir" in result.stderr and "Traceback" not in result.stderr


def test_a_status_port_past_65535_is_a_config_error(observer_daemon):
    observer_daemon.write_config("[sources.status]\nport = 99999\n")
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 2
    assert "[sources.status] port" in result.stderr and "65535" in result.stderr


def test_plugins_name_says_an_analyzer(observer_daemon):
    result = observer_daemon.run("plugins", "diagnosis")
    assert result.returncode == 0
    assert "an analyzer, entry point 'diagnosis'" in result.stdout


def test_check_resolved_lists_every_key_unset_ones_as_comments(observer_daemon):
    observer_daemon.write_config(
        MINIMAL.replace("{port}", "3999")
        + '[sources.gateway]\nurl = "http://127.0.0.1:1"\n'
        + '[sources.secured]\nplugin = "http"\nport = 3998\ntoken = "hunter2"\n'
    )
    result = observer_daemon.run("check", "--config", "observer.toml", "--resolved")
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout  # secrets stay masked
    resolved = tomllib.loads(result.stdout)
    assert resolved["sources"]["secured"]["token"] != "hunter2"
    sections = _sections(result.stdout)
    assert "# token = (unset)" in sections["[sources.http]"]
    assert "# listen = (unset)" in sections["[sources.gateway]"]
    assert not any(line.startswith("# token") for line in sections["[sources.secured]"])
    for table, plugin in (("sources.http", "http"), ("sources.gateway", "gateway")):
        shown = {line.lstrip("# ").split(" = ")[0] for line in sections[f"[{table}]"]}
        keys = set(_config_keys(plugin))
        assert keys <= shown, f"[{table}] leaves out {keys - shown}"


def _sections(text: str) -> dict[str, list[str]]:
    """The lines under each ``[table]`` header of a TOML text."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("["):
            current = sections.setdefault(line, [])
        elif line.strip():
            current.append(line)
    return sections


def _config_keys(plugin: str) -> list[str]:
    info = load_registry().get("sources", plugin)
    assert info is not None
    return [field.encode_name for field in msgspec.structs.fields(info.cls.Config)]
