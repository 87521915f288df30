"""The repository names no paths of the machine it was written on (issue 25).

Files refer to each other by repository-relative paths. A path under the places where a
machine keeps its users' and sessions' files (``/work``, ``/home``, ``/root``,
``/Users``, ``/tmp`` and the like) is one machine's, so every git-tracked text file is
scanned for one. System paths (``/usr/bin/...``, ``/proc/...``, ``/dev/null``,
``/etc/...``) are the same on every machine and are never flagged; a legitimate path
under a machine root goes in ``ALLOWED`` with the file it is in and why.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

MACHINE_ROOTS = (
    "work",
    "home",
    "root",
    "Users",
    "tmp",
    "var/tmp",
    "var/folders",
    "private",
    "mnt",
    "media",
    "scratch",
)
MACHINE_PATH = re.compile(
    # Not the tail of a relative path, a ~ or $VAR path, or a URL's path after its host.
    r"(?<![\w.~$])"
    r"(?:/(?:" + "|".join(map(re.escape, MACHINE_ROOTS)) + r")(?:/[\w.@+-]+)+"
    r"|\b[A-Za-z]:\\Users(?:\\[\w.@+-]+)+)"
)
"""An absolute path under a machine root, with at least one name after the root."""

# The paths here and in the tests below are split so that this file names none itself.
ALLOWED: dict[tuple[str, str], str] = {
    ("examples/fleet/README.md", "/" + "tmp/observer-nats"): (
        "a scratch store directory the reader's own nats-server is told to use"
    ),
}
"""(tracked file, path found in it) -> why it is not a machine's path."""


def machine_paths(text: str) -> list[str]:
    """The machine paths in ``text``, in order of appearance."""
    return [match.group(0) for match in MACHINE_PATH.finditer(text)]


def tracked_text_files() -> list[str]:
    """The repository's git-tracked files that hold text (no NUL byte), relative paths."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to scan")
    listed = subprocess.run(
        [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    )
    names = [name for name in listed.stdout.decode().split("\0") if name]
    return [name for name in names if _is_text(ROOT / name)]


def _is_text(path: Path) -> bool:
    """A regular file without a NUL byte (a symlink to a directory or binary data is not)."""
    return path.is_file() and b"\0" not in path.read_bytes()


@pytest.mark.parametrize(
    "text",
    [
        *(f"see /{root}/session-7/notes.md" for root in MACHINE_ROOTS),
        '"raw_file": "/' + 'work/main/bench/results/x.profile.txt"',
        "--results=/" + "tmp/exp/ab",
        "file:///" + "home/alice/x",
        "C:\\" + "Users\\alice\\repo",
    ],
)
def test_a_machine_path_is_found(text: str) -> None:
    assert machine_paths(text), text


@pytest.mark.parametrize(
    "text",
    [
        "/usr/bin/chromium",
        "/proc/PID/status",
        "cat /dev/null",
        "/etc/os-release",
        "/var/spool/inbox",
        "${TMPDIR:-/tmp}/observer-nats-$NATS_PORT",
        "http://127.0.0.1:8080/home/index.html",
        "POST /api/run",
        "bench/results/20261126-140546.profile.txt",
        "../cache/x and ~/data/x",
        "the file systems /, /tmp and /work",
    ],
)
def test_a_system_url_or_relative_path_is_not(text: str) -> None:
    assert machine_paths(text) == []


def test_no_tracked_file_names_a_machine_path() -> None:
    found = [
        f"{name}:{line}: {path}"
        for name in tracked_text_files()
        for line, text in enumerate(
            (ROOT / name).read_text(encoding="utf-8", errors="replace").splitlines(), 1
        )
        for path in machine_paths(text)
        if (name, path) not in ALLOWED
    ]
    assert not found, (
        "paths of one machine in tracked files (use a repository-relative path, or add a "
        "legitimate one to ALLOWED):\n" + "\n".join(found)
    )


def test_every_allowed_path_is_still_there() -> None:
    """An allow-list entry whose path is gone is stale and would hide a future one."""
    stale = [
        f"{name}: {path}"
        for name, path in ALLOWED
        if path not in machine_paths((ROOT / name).read_text(encoding="utf-8"))
    ]
    assert not stale, "stale ALLOWED entries:\n" + "\n".join(stale)


def _bench_common() -> ModuleType:
    """bench/common.py, which is not a package (the benchmark runs it as a script's module)."""
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_records_only_relative_paths(tmp_path: Path) -> None:
    """What bench/run.py writes into a results file (raw_file, the tail's file, the
    command) names no path outside the repository."""
    common = _bench_common()
    results = ROOT / "bench" / "results" / "x.profile.txt"
    assert common.shareable(results) == "bench/results/x.profile.txt"
    assert common.shareable(tmp_path / "tail-1000.jsonl") == "tail-1000.jsonl"
    outside, inside = str(tmp_path / "ab"), str(ROOT / "bench" / "r2")
    command = common.shareable_command(
        ["--only", "tail", "--results", outside, f"--data-dir={outside}", "--nice", "-10"]
    )
    assert command == ["--only", "tail", "--nice", "-10"]
    assert common.shareable_command(["--results", inside]) == ["--results", "bench/r2"]
