"""``pip install`` a plugin distribution from its folder (the ``installed_package`` fixture)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["InstalledPackage", "PackageInstaller"]


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    version: str
    target: Path | None
    """The folder it went to with ``target=``; None: the running environment."""


class PackageInstaller:
    """``pip install --no-deps`` distributions from their folders, once each.

    The folder is copied first, so a build leaves nothing behind in it. Into
    the running environment by default (uninstalled by :meth:`close` unless it
    was installed before; an editable install is left alone, not replaced), or
    into ``target`` (a folder to put on ``PYTHONPATH``: nothing else sees it).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._done: dict[tuple[Path, Path | None], InstalledPackage] = {}
        self._to_uninstall: list[str] = []

    def __call__(self, folder: Path | str, *, target: Path | None = None) -> InstalledPackage:
        source = Path(folder).resolve()
        key = (source, target)
        if key not in self._done:
            self._done[key] = self._install(source, target)
        return self._done[key]

    def _install(self, source: Path, target: Path | None) -> InstalledPackage:
        project = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        name, version = str(project["name"]), str(project.get("version", ""))
        before = _installed_version(name) if target is None else None
        if before == "editable":
            return InstalledPackage(name, version, None)
        copy = self.workdir / f"{name}-src-{len(self._done)}"
        shutil.copytree(
            source,
            copy,
            ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".*_cache"),
        )
        where = ["--target", str(target)] if target is not None else ["--force-reinstall"]
        _pip("install", "--no-deps", *where, str(copy))
        importlib.invalidate_caches()
        if target is None and before is None:
            self._to_uninstall.append(name)
        return InstalledPackage(name, version, target)

    def close(self) -> None:
        for name in reversed(self._to_uninstall):
            _pip("uninstall", "-y", name)
        self._to_uninstall.clear()
        importlib.invalidate_caches()


def _installed_version(name: str) -> str | None:
    """``"editable"``, the installed version, or None when ``name`` is not installed."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(name)
    except PackageNotFoundError:
        return None
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        return "editable"
    return dist.version


def _pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
