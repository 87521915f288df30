"""The package as users get it: a wheel in a fresh venv, a plugin author's project
installing the testing kit as the docs say, and a third-party plugin."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from observer_core.compiled import MODULES

ROOT = Path(__file__).resolve().parents[2]
TICKER = ROOT / "tests" / "fixtures" / "observer-ticker"
EXAMPLE = ROOT / "examples" / "observer-source-example"
GUIDE = ROOT / "docs" / "writing-plugins.md"
INSTALL_KIT = "pip install 'observer-core[testing]'"
"""How docs/writing-plugins.md installs observer-core with its testing kit."""
INSTALL_PROJECT = "pip install -e '.[test]'"
"""How it installs the plugin author's project (whose ``test`` extra names the kit)."""


def pip(*args: str, python: str = sys.executable) -> None:
    subprocess.run([python, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True)


def fresh_venv(folder: Path) -> str:
    """A new venv with pip and nothing else; its python."""
    venv.create(folder, with_pip=True)
    return str(folder / "bin" / "python")


def build_wheel(workdir: Path, env: dict[str, str] | None = None) -> Path:
    """observer-core's wheel, built in ``workdir`` from the tracked files only (away from the
    work tree), with ``env`` added to the build's environment."""
    source = workdir / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(workdir / "dist"), str(source)],
        check=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
    )
    [built] = (workdir / "dist").glob("observer_core-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """observer-core's wheel, as ``pip install`` builds it here."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


COMPILED = sorted(["_compiled__mypyc", *(module.__name__.rpartition(".")[2] for module in MODULES)])
"""The extensions a wheel built with a compiler holds: mypyc's runtime and the modules."""
HAS_COMPILER = shutil.which(str(sysconfig.get_config_var("CC") or "cc").split()[0]) is not None


def compiled_modules(names: list[str]) -> list[str]:
    """The ingest path's compiled modules among a wheel's files (setup.py)."""
    return sorted(
        name.split("/")[-1].split(".")[0]
        for name in names
        if name.startswith("observer_core/") and name.endswith(".so")
    )


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_without_a_top_level_plugins_module(wheel, tmp_path):
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    top_level = {name.split("/")[0] for name in names}
    assert "plugins" not in top_level
    assert {"observer_core", "observer_plugins"} <= top_level
    assert "observer_core/testing/plugin.py" in names  # the testing kit is a package
    inits = subprocess.run(
        ["git", "ls-files", "observer_core/**__init__.py", "plugins/**__init__.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "observer_core/http/__init__.py" in inits
    for init in inits:  # every package of the source is in the wheel
        package = init.replace("plugins/", "observer_plugins/", 1)
        assert package in names, f"{package} is not in the wheel: list it in pyproject.toml"
    # The ingest path is compiled where there is a C compiler, its source shipped beside;
    # mypyc's runtime is inside the package, not a top-level module.
    assert compiled_modules(names) == (COMPILED if HAS_COMPILER else [])
    assert {"observer_core/http/_connection.py", "observer_core/_engine/dispatch.py"} <= set(names)
    assert not [name for name in top_level if "mypyc" in name]
    [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "observer_core = observer_core.testing.plugin" in archive.read(entry_points).decode()

    python = fresh_venv(tmp_path / "venv")
    env_dir = tmp_path / "venv"
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

    ingest_path = [python, "-c", "from observer_core.compiled import INGEST_PATH as it; print(it)"]
    answer = subprocess.run(ingest_path, capture_output=True, text=True, cwd=tmp_path).stdout
    assert answer == ("compiled\n" if HAS_COMPILER else "interpreted\n")

    kit = subprocess.run([python, "-c", "import observer_core.testing"], capture_output=True)
    assert kit.returncode == 1  # without the [testing] extra, the kit says what to install
    assert b"observer_core.testing needs pytest: pip install 'observer-core[testing]'" in kit.stderr


@pytest.mark.slow
def test_without_a_c_compiler_the_wheel_builds_with_the_ingest_path_interpreted(tmp_path):
    built = build_wheel(tmp_path, {"CC": "false", "LDSHARED": "false"})  # every compile fails
    names = zipfile.ZipFile(built).namelist()
    assert compiled_modules(names) == []
    assert "observer_core/http/_connection.py" in names


def run_as_documented(command: str, python: str, cwd: Path, index: Path) -> None:
    """Run a ``pip install`` line of the docs with ``python``'s pip; ``index`` (a folder of
    wheels) stands in for PyPI, where observer-core would come from."""
    words = shlex.split(command)
    assert words[:2] == ["pip", "install"], command
    subprocess.run(
        [python, "-m", "pip", *words[1:], "--find-links", str(index), "-q"],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.mark.slow
def test_a_plugin_project_installs_the_kit_as_documented_and_its_tests_pass(wheel, tmp_path):
    guide = GUIDE.read_text(encoding="utf-8")
    assert INSTALL_KIT in guide and INSTALL_PROJECT in guide
    python = fresh_venv(tmp_path / "venv")
    run_as_documented(INSTALL_KIT, python, tmp_path, wheel.parent)
    kit = [python, "-c", "import observer_core.testing.plugin"]
    assert subprocess.run(kit, capture_output=True).returncode == 0  # the extra brings pytest
    project = tmp_path / "observer-source-example"
    shutil.copytree(
        EXAMPLE, project, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    run_as_documented(INSTALL_PROJECT, python, project, wheel.parent)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 't'}"],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "skipped" not in result.stdout


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
