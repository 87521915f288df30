"""State that survives restarts: the ``state_dir`` lock and atomically written files."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec

from .files import make_private_dir, open_private, write_private_atomic

__all__ = ["StateDirLock", "StateLocked", "StateStore", "atomic_write"]

_T = TypeVar("_T")
log = logging.getLogger("observer_core.state")


class StateLocked(Exception):
    """Another process holds the ``state_dir``."""


atomic_write = write_private_atomic
"""Write a private file atomically (``0600``, never through a symlink): see
:func:`observer_core.files.write_private_atomic`."""


class StateDirLock:
    """An exclusive ``flock`` on ``state_dir/observer.lock`` holding our pid."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "observer.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        make_private_dir(self.path.parent)
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
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
    never crash-looped on. Files are private (``0600``, the folder ``0700``, as is
    ``state_dir`` when this creates it) and never opened through a symlink.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def make_root(self) -> Path:
        """Create the folder (and ``state_dir``, its parent) ``0700`` if missing."""
        make_private_dir(self.root, top=self.root.parent)
        return self.root

    def open(self, name: str, flags: int) -> int:
        """``os.open`` one of this instance's files, privately (see :func:`open_private`)."""
        self.make_root()
        return open_private(self.path(name), flags)

    def load(self, name: str, type: type[_T], default: _T) -> _T:
        path = self.path(name)
        try:
            fd = open_private(path, os.O_RDONLY)
        except FileNotFoundError:
            return default
        with open(fd, "rb") as handle:
            data = handle.read()
        try:
            return msgspec.json.decode(data, type=type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("state file %s could not be read (%s); moved to %s", path, exc, aside)
            return default

    def save_sync(self, name: str, value: Any) -> None:
        self.write_bytes(name, msgspec.json.encode(value))

    async def save(self, name: str, value: Any) -> None:
        data = msgspec.json.encode(value)
        await anyio.to_thread.run_sync(self.write_bytes, name, data)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace the file ``name`` by ``data`` atomically (blocks: call it in a thread)."""
        self.make_root()
        write_private_atomic(self.path(name), data)
