"""State that survives restarts: the ``state_dir`` lock and atomically written files."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec

__all__ = ["StateDirLock", "StateLocked", "StateStore", "atomic_write"]

_T = TypeVar("_T")
log = logging.getLogger("observer_core.state")


class StateLocked(Exception):
    """Another process holds the ``state_dir``."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: a crash leaves the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class StateDirLock:
    """An exclusive ``flock`` on ``state_dir/observer.lock`` holding our pid."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "observer.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(
                f"state_dir {self.path.parent} is in use by another observer-core "
                f"(pid {holder}); give each daemon its own state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StateStore:
    """One instance's files under ``state_dir/<kind>.<instance>/``.

    ``load`` is for ``open()`` (before the loop is busy); ``save`` writes
    atomically in a worker thread so the event loop never waits on the disk.
    A file that cannot be decoded is moved aside to ``*.corrupt`` and reported,
    never crash-looped on.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def load(self, name: str, type: type[_T], default: _T) -> _T:
        path = self.path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return default
        try:
            return msgspec.json.decode(data, type=type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("state file %s could not be read (%s); moved to %s", path, exc, aside)
            return default

    def save_sync(self, name: str, value: Any) -> None:
        atomic_write(self.path(name), msgspec.json.encode(value))

    async def save(self, name: str, value: Any) -> None:
        data = msgspec.json.encode(value)
        await anyio.to_thread.run_sync(atomic_write, self.path(name), data)
