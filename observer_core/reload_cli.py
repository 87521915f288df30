"""``observer-core reload``: apply a changed config to the running daemon (contract §12.1).

The file is validated first (exit 2 on a config error, the daemon untouched), in the
environment the daemon started with when that can be read (``/proc/PID/environ``: the
same user, or root), else in this command's own. With
``--dry-run`` it prints what would be added, changed, removed and kept, compared with
the config the daemon runs (kept in ``state_dir/reload.json``). Otherwise it sends
SIGHUP to the daemon holding the ``state_dir`` lock and waits for the outcome.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from .cli_args import add_config_command
from .config import (
    ConfigError,
    ObserverConfig,
    ObserverSettings,
    default_config_path,
    load_config,
    parse_toml,
)
from .files import open_private
from .plugins import load_registry
from .reload_plan import diff, snapshot
from .reload_state import ReloadOutcome, read_outcome
from .state import StateDirLock

__all__ = ["COMMANDS", "add_command", "daemon_pid"]

EXIT_OK, EXIT_REFUSED, EXIT_CONFIG, EXIT_NO_DAEMON = 0, 1, 2, 3
WAIT_SECS = 30.0
"""How long ``reload`` waits for the daemon's outcome (and for a daemon still starting)."""
POLL_SECS = 0.05
_T = TypeVar("_T")


def add_command(commands: Any, config_help: str) -> None:
    """Register ``reload`` on the ``observer-core`` sub-command parser."""
    reload = add_config_command(
        commands,
        "reload",
        summary="apply a changed config to the running daemon",
        description="Validate the config, then make the daemon holding its state_dir re-read "
        "it (SIGHUP) and wait for the outcome. Exit 0 when it was applied, 1 when the "
        "daemon refused it (the reason is printed), 2 on a config error (the daemon is "
        "not signalled), 3 when no daemon holds the state_dir.",
        config_help=config_help + "; the file the daemon was started with",
    )
    reload.add_argument(
        "--dry-run",
        action="store_true",
        help="print the instances that would be added, changed, removed and kept; change nothing",
    )


def daemon_pid(state_dir: Path) -> int | None:
    """The pid of the daemon holding ``state_dir``'s lock; None when none holds it."""
    path = StateDirLock(state_dir).path
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: a daemon runs
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _reload(args: argparse.Namespace) -> int:
    path: Path = args.config or default_config_path()
    # Validate in the daemon's environment when it can be read (the daemon re-reads the
    # file in it), else in ours: find the daemon first, by a lenient look at state_dir.
    state_dir = _state_dir_of(path)
    pid = daemon_pid(state_dir) if state_dir is not None else None
    environ = _environ_of(pid) if pid is not None else None
    config = load_config(path, load_registry(), environ)
    if config.state_dir != state_dir:
        pid = daemon_pid(config.state_dir)
    if pid is None:
        return _no_daemon(config)
    deadline = time.monotonic() + WAIT_SECS
    # A daemon still starting has not written its outcome yet: it cannot take SIGHUP.
    before = _poll(lambda: _outcome_of(config, pid), deadline)
    if before is None:
        print(
            f"observer-core: the daemon (pid {pid}) wrote no {config.state_dir}/reload.json "
            f"within {WAIT_SECS:g}s: is it still starting?",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    if args.dry_run:
        return _dry_run(config, before)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return _no_daemon(config)
    except OSError as exc:
        if exc.errno != errno.EPERM:
            raise
        print(f"observer-core: not allowed to signal the daemon (pid {pid})", file=sys.stderr)
        return EXIT_REFUSED

    def newer() -> ReloadOutcome | None:
        found = _outcome_of(config, pid)
        return found if found is not None and found.generation > before.generation else None

    outcome = _poll(newer, deadline)
    if outcome is None:
        print(
            f"observer-core: the daemon (pid {pid}) reported no outcome within {WAIT_SECS:g}s",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    if outcome.result != "success":
        print(f"observer-core: reload refused: {outcome.error}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{config.path}: applied (generation {outcome.generation})")
    return EXIT_OK


def _dry_run(config: ObserverConfig, running: ReloadOutcome) -> int:
    found = diff(running.running, snapshot(config))
    print(f"{config.path}: valid; compared with the running config:")
    for label, names in (
        ("added", found.added),
        ("changed", found.changed),
        ("removed", found.removed),
        ("kept", found.unchanged),
    ):
        for name in names:
            print(f"  {label:<8} {name}")
    for key in found.live_settings:
        print(f"  changed  [observer] {key}")
    refusal = found.refusal(config.path.name)
    if refusal:
        print(f"  refused  {refusal}")
    return EXIT_OK


class _Lenient(dict[str, str]):
    """An environment in which every variable is set (to ``0`` when it is not): enough
    to read ``state_dir`` from a file whose other values need variables we lack."""

    def get(self, key: str, default: object = None) -> str:
        return super().get(key) or "0"


def _state_dir_of(path: Path) -> Path | None:
    """The ``state_dir`` the file names, read leniently (None when it cannot be)."""
    try:
        document = parse_toml(path.read_text(encoding="utf-8"), _Lenient(os.environ))
        settings = msgspec.convert(document.get("observer", {}), ObserverSettings)
    except (OSError, UnicodeDecodeError, ConfigError, msgspec.ValidationError):
        return None
    return ObserverConfig(path=path.resolve(), settings=settings).state_dir


def _environ_of(pid: int) -> dict[str, str] | None:
    """The environment process ``pid`` started with (Linux's ``/proc``); None when it
    cannot be read (another user's process, another system)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if b"=" in entry)
    return {os.fsdecode(key): os.fsdecode(value) for key, _, value in pairs}


def _outcome_of(config: ObserverConfig, pid: int) -> ReloadOutcome | None:
    """``reload.json`` when the daemon ``pid`` wrote it (not one left by an earlier run)."""
    found = read_outcome(config.state_dir)
    return found if found is not None and found.pid == pid else None


def _poll(check: Callable[[], _T | None], deadline: float) -> _T | None:
    """``check()`` every ``POLL_SECS`` until it gives something or ``deadline`` passes."""
    while (found := check()) is None and time.monotonic() < deadline:
        time.sleep(POLL_SECS)
    return found


def _no_daemon(config: ObserverConfig) -> int:
    print(
        f"observer-core: no daemon holds state_dir {config.state_dir} "
        f"(start one with: observer-core run --config {config.path})",
        file=sys.stderr,
    )
    return EXIT_NO_DAEMON


COMMANDS = {"reload": _reload}
