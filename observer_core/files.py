"""How the process creates its files (contract §11.6).

Private files (state, queues, dead letters, the lock) are created ``0600`` in
folders created ``0700``, and are never opened through a symbolic link: a link
planted where one of them goes is a :class:`SymlinkRefused` naming the path,
and its target is neither read, written nor truncated. Sink outputs that other
services read follow the umask, or the sink's ``file_mode``. Files and folders
that already exist keep their modes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from pathlib import Path

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "SymlinkRefused",
    "make_private_dir",
    "open_output",
    "open_private",
    "parse_file_mode",
    "write_private_atomic",
]

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_MODE = re.compile(r"(?:0o?)?([0-7]{3})")


class SymlinkRefused(OSError):
    """A symbolic link sits where a private file goes; it is not followed."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(errno.ELOOP, "is a symbolic link; refusing to follow it", str(path))

    def __str__(self) -> str:
        return f"{self.filename}: is a symbolic link; refusing to follow it"


def make_private_dir(path: Path, top: Path | None = None) -> None:
    """Create ``path``: the missing folders from ``top`` (default: ``path``) down are
    ``0700``, those above ``top`` follow the umask. Existing folders are left alone."""
    top = path if top is None else top
    top.parent.mkdir(parents=True, exist_ok=True)
    current = top
    for part in ("", *path.relative_to(top).parts):
        current /= part
        try:
            os.mkdir(current, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(current, PRIVATE_DIR_MODE)  # exactly 0700, whatever the umask took away


def open_private(path: Path, flags: int) -> int:
    """``os.open`` for a private file: created ``0600``, never through a symlink."""
    try:
        return os.open(path, flags | _NOFOLLOW, PRIVATE_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise SymlinkRefused(path) from None
        raise


def write_private_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` through a rename: a crash leaves the old or the new
    file, never a torn one. A new file is ``0600``, an existing one keeps its mode; a
    symlink at ``path`` (or at its temporary) is refused. Creates the parent ``0700``."""
    make_private_dir(path.parent)
    mode = _existing_mode(path)
    temporary = path.with_name(f".{path.name}.tmp")
    if os.path.islink(temporary):
        raise SymlinkRefused(temporary)
    with contextlib.suppress(FileNotFoundError):  # left by a crash
        os.unlink(temporary)
    fd = open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        if mode is not None and mode != PRIVATE_FILE_MODE:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    _existing_mode(path)  # a symlink planted meanwhile is refused, not replaced
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _existing_mode(path: Path) -> int | None:
    """The permission bits of the regular file at ``path``; None when there is none.
    Raises :class:`SymlinkRefused` for a symlink."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise SymlinkRefused(path)
    return stat.S_IMODE(info.st_mode)


def open_output(path: Path, flags: int, mode: int | None = None) -> int:
    """``os.open`` for a sink output others read, creating it (and its folders) when
    missing: with the umask's mode, or exactly ``mode`` when given. An existing file
    keeps its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags |= os.O_CLOEXEC | os.O_CREAT
    create_mode = 0o666 if mode is None else mode
    try:
        fd = os.open(path, flags | os.O_EXCL, create_mode)
    except FileExistsError:  # it exists (or is a link to where it goes): its mode stays
        return os.open(path, flags, create_mode)
    if mode is not None:
        try:
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask took away
        except BaseException:
            os.close(fd)
            raise
    return fd


def parse_file_mode(text: str, key: str = "file_mode") -> int:
    """``"0640"`` (or ``"640"``, ``"0o640"``) as an int; ValueError naming ``key`` else."""
    found = _FILE_MODE.fullmatch(text)
    if found is None:
        raise ValueError(
            f'{key}: expected an octal mode of three digits such as "0640", got {text!r}'
        )
    return int(found.group(1), 8)
