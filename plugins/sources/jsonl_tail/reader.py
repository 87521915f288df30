"""Blocking file work for the tail: knowing a file again, and reading it in bounded chunks.

Everything here runs in a worker thread (``anyio.to_thread``), never on the
event loop. A file is known by its device, inode and the SHA-256 of its first
``fp_len`` bytes (inodes are reused); ``fp_len`` grows up to
:data:`FINGERPRINT_BYTES` as the file does, so the fingerprint stays valid
while the file is appended to.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from observer_core import Op

from .formats import LineFormat

__all__ = [
    "CHUNK_BYTES",
    "FINGERPRINT_BYTES",
    "MAX_LINE_BYTES",
    "Chunk",
    "Cursor",
    "TailState",
    "TrackedFile",
    "find_file",
    "identity_of",
    "open_file",
    "open_matching",
    "read_chunk",
]

CHUNK_BYTES = 1 << 20
"""Bytes read at a time: the most of a file held in memory, bar one over-long line."""
MAX_LINE_BYTES = 4 << 20
"""A line longer than this is skipped (and counted) without being held whole."""
FINGERPRINT_BYTES = 4096
MAX_SCAN_ENTRIES = 10000
"""Directory entries looked at when searching for a file that was rotated away."""


class Cursor(msgspec.Struct):
    """Where reading stopped in one file, and how to know that file again."""

    dev: int
    ino: int
    fp_len: int
    fp: str
    offset: int
    discarding: bool = False
    """True while skipping the rest of an over-long line."""


class TailState(msgspec.Struct):
    """What survives a restart: the file at ``path``, and rotated files not yet finished."""

    path: str
    current: Cursor | None = None
    rotated: list[Cursor] = msgspec.field(default_factory=list)


@dataclass(eq=False)
class TrackedFile:
    """An open file being read; the descriptor is kept so a rotated file can be finished."""

    fd: int
    name: str
    dev: int
    ino: int
    fp_len: int
    fp: str
    offset: int = 0
    discarding: bool = False
    size: int = 0
    idle_polls: int = 0
    """Polls in a row that found nothing new (a rotated file is let go after one)."""

    @property
    def identity(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def cursor(self) -> Cursor:
        return Cursor(self.dev, self.ino, self.fp_len, self.fp, self.offset, self.discarding)

    def matches(self, cursor: Cursor) -> bool:
        """True when ``cursor`` was taken in this very file (same inode and first bytes)."""
        if self.identity != (cursor.dev, cursor.ino):
            return False
        size = os.fstat(self.fd).st_size
        if size < cursor.offset or size < cursor.fp_len:
            return False
        return _fingerprint(self.fd, cursor.fp_len) == cursor.fp

    def changed_in_place(self) -> str | None:
        """``"truncated"`` or ``"rewritten"`` when the file no longer holds what was read
        (it is then read again from its start); else ``None``. Extends the fingerprint."""
        size = os.fstat(self.fd).st_size
        self.size = size
        if size < self.offset or size < self.fp_len:
            what = "truncated"
        elif _fingerprint(self.fd, self.fp_len) != self.fp:
            what = "rewritten"
        else:
            if self.fp_len < FINGERPRINT_BYTES and size > self.fp_len:
                self.fp_len = min(size, FINGERPRINT_BYTES)
                self.fp = _fingerprint(self.fd, self.fp_len)
            return None
        self.offset, self.discarding = 0, False
        self.fp_len = min(size, FINGERPRINT_BYTES)
        self.fp = _fingerprint(self.fd, self.fp_len)
        return what

    def start_at_last_line(self) -> None:
        """Skip what the file holds now: start after its last newline (``read_from = "end"``)."""
        size = os.fstat(self.fd).st_size
        self.size = position = size
        while position > 0:
            if size - position >= MAX_LINE_BYTES:  # inside a line too long to keep: skip it
                self.offset, self.discarding = size, True
                return
            step = min(65536, position)
            newline = os.pread(self.fd, step, position - step).rfind(b"\n")
            if newline >= 0:
                self.offset = position - step + newline + 1
                return
            position -= step
        self.offset = 0  # no complete line yet: the first one is still being written

    def unterminated_bytes(self) -> int:
        """Bytes after the last complete line (0 when discarding an over-long line)."""
        size = os.fstat(self.fd).st_size
        return 0 if self.discarding else max(size - self.offset, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _fingerprint(fd: int, length: int) -> str:
    digest = hashlib.sha256()
    position = 0
    while position < length:
        data = os.pread(fd, length - position, position)
        if not data:
            break
        digest.update(data)
        position += len(data)
    return digest.hexdigest()


def identity_of(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of the file ``path`` names now, or ``None`` when there is none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


def open_file(path: Path) -> TrackedFile | None:
    """Open ``path`` for reading; ``None`` when it does not exist. Refuses non-regular files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        fp_len = min(info.st_size, FINGERPRINT_BYTES)
        return TrackedFile(
            fd,
            str(path),
            info.st_dev,
            info.st_ino,
            fp_len,
            _fingerprint(fd, fp_len),
            size=info.st_size,
        )
    except BaseException:
        os.close(fd)
        raise


def find_file(directory: Path, cursor: Cursor) -> TrackedFile | None:
    """The file in ``directory`` that ``cursor`` was taken in (renamed by a rotation), if any."""
    try:
        entries = os.scandir(directory)
    except OSError:
        return None
    with entries:
        for number, entry in enumerate(entries):
            if number >= MAX_SCAN_ENTRIES:
                break
            if entry.inode() != cursor.ino or not entry.is_file(follow_symlinks=False):
                continue
            try:
                found = open_matching(Path(entry.path), cursor)
            except OSError:
                continue
            if found is not None:
                return found
    return None


def open_matching(path: Path, cursor: Cursor) -> TrackedFile | None:
    """``path`` opened at ``cursor``'s offset when it is the file ``cursor`` was taken in."""
    tracked = open_file(path)
    if tracked is None:
        return None
    if not tracked.matches(cursor):
        tracked.close()
        return None
    tracked.offset, tracked.discarding = cursor.offset, cursor.discarding
    return tracked


@dataclass(slots=True)
class Chunk:
    """What one read gave: ops, the offset after the bytes it covers, and skipped lines."""

    ops: list[Op]
    end: int
    discarding: bool
    eof: bool
    """True when the file has nothing more to read now."""
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """``(byte offset, reason)`` of each line that did not map."""


def read_chunk(
    fd: int,
    offset: int,
    discarding: bool,
    lines: LineFormat,
    chunk_bytes: int = CHUNK_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Chunk:
    """Read the complete lines after ``offset`` (up to about ``chunk_bytes``) and decode them.

    A trailing line without its newline is left for the next read; a line
    longer than ``max_line_bytes`` is skipped while it is read past.
    """
    size = chunk_bytes
    while True:
        data = os.pread(fd, size, offset)
        full = len(data) == size
        start = 0
        if discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return Chunk([], offset + len(data), True, eof=not full)
            start, discarding = newline + 1, False
        last = data.rfind(b"\n")
        if last >= start:
            break
        if start > 0 or not full:  # the end of a skipped line, or a line still being written
            return Chunk([], offset + start, False, eof=not full)
        if size >= max_line_bytes:
            reason = f"line longer than {max_line_bytes} bytes"
            return Chunk([], offset + len(data), True, eof=False, skipped=[(offset, reason)])
        size = min(size * 4, max_line_bytes)
    block = data[start : last + 1]
    ops = lines.decode_block(block)
    chunk = Chunk(ops or [], offset + last + 1, False, eof=not full)
    if ops is None:
        _decode_by_line(lines, block, offset + start, chunk)
    return chunk


def _decode_by_line(lines: LineFormat, block: bytes, base: int, chunk: Chunk) -> None:
    position = base
    for line in block.split(b"\n")[:-1]:
        if line.strip():
            try:
                chunk.ops.append(lines.decode_line(line))
            except Exception as exc:  # a format's bug must not stop the tail: skip the line
                reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                chunk.skipped.append((position, reason))
        position += len(line) + 1
