"""A passthrough FUSE filesystem whose every write(2) takes ``DELAY`` seconds: a disk under
dirty-page throttling, for the jsonl sink's slow-write guard (test_slow_disk.py).

Run as ``python slow_fuse.py BACKING MOUNTPOINT DELAY``: it mounts BACKING at
MOUNTPOINT in the foreground and serves until unmounted (``fusermount3 -u``). FUSE
without a writeback cache sends each write to this process and the writer waits for
the answer, so the delay is the caller's.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import mfusepy

_STAT_KEYS = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size")
_STATVFS_KEYS = (
    "f_bavail",
    "f_bfree",
    "f_blocks",
    "f_bsize",
    "f_favail",
    "f_ffree",
    "f_files",
    "f_flag",
    "f_frsize",
    "f_namemax",
)


class SlowPassthrough(mfusepy.Operations):
    """Every call goes to the same path under ``root``; ``write`` first waits ``delay``."""

    def __init__(self, root: str, delay: float) -> None:
        self.root = root
        self.delay = delay
        self._never = threading.Event()

    def _real(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        info = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
        stat = {key: getattr(info, key) for key in _STAT_KEYS}
        stat["st_uid"] = info.st_uid
        return stat

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise mfusepy.FuseOSError(13)
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def statfs(self, path: str) -> dict[str, int]:
        info = os.statvfs(self._real(path))
        return {key: getattr(info, key) for key in _STATVFS_KEYS}

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._real(path), ns=times)
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._real(old), self._real(new))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._real(path))
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._real(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._never.wait(self.delay)
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if fh is None:
            os.truncate(self._real(path), length)
        else:
            os.ftruncate(fh, length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        os.fsync(fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


def main() -> None:
    backing, mountpoint, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    operations = SlowPassthrough(backing, delay)
    operations.use_ns = True
    mfusepy.FUSE(operations, mountpoint, foreground=True)


if __name__ == "__main__":
    main()
