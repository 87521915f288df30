"""The package as users get it: a wheel in a fresh venv, and a third-party plugin."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TICKER = ROOT / "tests" / "fixtures" / "observer-ticker"


def pip(*args: str, python: str = sys.executable) -> None:
    subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_without_a_top_level_plugins_module(tmp_path):
    source = tmp_path / "source"  # build from the tracked files only, away from the work tree
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    [wheel] = (tmp_path / "dist").glob("observer_core-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert "plugins" not in top_level
    assert {"observer_core", "observer_plugins"} <= top_level

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    pip("install", str(wheel), python=python)
    result = subprocess.run(
        [str(env_dir / "bin" / "observer-core"), "plugins"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    for name in ("http", "jsonl", "console"):
        assert any(
            line.split()[:2] == [name, "observer-core"] for line in result.stdout.splitlines()
        )
    assert "not loaded" not in result.stdout
    init = subprocess.run(
        [str(env_dir / "bin" / "observer-core"), "init", "o.toml"], cwd=tmp_path, check=True
    )
    assert init.returncode == 0


@pytest.fixture(scope="module")
def ticker_installed():
    pip("install", "--no-deps", str(TICKER))
    try:
        yield
    finally:
        pip("uninstall", "-y", "observer-ticker")


def test_third_party_plugin_is_listed_with_its_distribution(ticker_installed, observer_daemon):
    result = observer_daemon.run("plugins", "--verbose")
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["ticker", "observer-ticker", "1.2.3"] in rows


def test_third_party_plugin_runs(ticker_installed, observer_daemon):
    observer_daemon.write_config(
        """
        [sources.tick]
        plugin = "ticker"
        count = 3
        [sinks.ops]
        plugin = "jsonl"
        path = "ops.jsonl"
        """
    )
    result = observer_daemon.run("run", "--once", "--config", "observer.toml")
    assert result.returncode == 0, result.stderr
    rows = [
        json.loads(line)
        for line in (observer_daemon.directory / "ops.jsonl").read_text().splitlines()
    ]
    assert [row["input_summary"] for row in rows] == ["tick 0", "tick 1", "tick 2"]
    assert {row["source"] for row in rows} == {"ticker"}
