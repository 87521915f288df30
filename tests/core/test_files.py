"""Files the process creates (contract §11.6): private modes, sink output modes, symlinks.

The daemon tests run the real ``observer-core run`` on real files; the unit tests
call :mod:`observer_core.files` and :class:`~observer_core.state.StateStore` directly.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from observer_core.files import (
    SymlinkRefused,
    make_private_dir,
    open_output,
    open_private,
    parse_file_mode,
    write_private_atomic,
)
from observer_core.state import StateDirLock, StateStore
from observer_core.testing import StubReply, wait_for

PRECIOUS = b"someone else's file, no newline at the end"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    """Run the block (e.g. a daemon's fork) under ``value``; restore the old umask."""
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def victim(tmp_path: Path) -> Path:
    """A file a planted symlink points at: it must stay as it is."""
    path = tmp_path / "victim.txt"
    path.write_bytes(PRECIOUS)
    return path


DAEMON = """
[observer]
cycle_secs = 0.2
state_dir = "state"
[sources.http]
port = {{port}}
[analyzers.playbook]
every = 1
min_successes = 1
min_group = 1
[sinks.gw]
plugin = "gateway_log"
url = "{url}"
max_attempts = 1
[sinks.ops]
plugin = "jsonl"
path = "out/ops.jsonl"
[sinks.rows]
plugin = "jsonl"
path = "out/rows.jsonl"
accepts = ["playbook"]
file_mode = "0640"
"""


def test_daemon_creates_private_state_and_sink_outputs_by_umask_or_file_mode(
    observer_daemon, stub_server
):
    gateway = stub_server()
    gateway.replies["/log"] = lambda request: StubReply(status=500, body={"error": "down"})
    with umask(0o002):
        daemon = observer_daemon.start(DAEMON.format(url=gateway.url))
    daemon.post_events([{"endpoint": "/e", "input_summary": "in", "success": True}])
    state = daemon.directory / "state"
    gw = state / "sinks.gw"
    wait_for(lambda: (gw / "dead_letter.jsonl").exists(), what="a dead letter")
    wait_for(lambda: (state / "analyzers.playbook" / "emitted.json").exists(), what="state")
    assert mode(state) == 0o700
    assert mode(state / "observer.lock") == 0o600
    for folder in ("sinks.gw", "analyzers.playbook"):
        assert mode(state / folder) == 0o700, folder
    for path in (gw / "spool.jsonl", gw / "dead_letter.jsonl"):
        assert mode(path) == 0o600, path
    assert mode(state / "analyzers.playbook" / "emitted.json") == 0o600
    out = daemon.directory / "out"
    assert mode(out / "ops.jsonl") == 0o664  # the umask decides
    wait_for(lambda: (out / "rows.jsonl").exists(), what="the rows file")
    assert mode(out / "rows.jsonl") == 0o640  # file_mode decides
    assert mode(out) == 0o775  # not under state_dir: the umask decides
    assert daemon.stop() == 0


def test_existing_files_keep_their_modes(observer_daemon, stub_server):
    gateway = stub_server()
    gateway.replies["/log"] = lambda request: StubReply()
    out = observer_daemon.directory / "out"
    out.mkdir()
    (out / "ops.jsonl").touch(mode=0o644)
    (out / "rows.jsonl").touch(mode=0o600)
    spool = observer_daemon.directory / "state" / "sinks.gw" / "spool.jsonl"
    spool.parent.mkdir(parents=True, mode=0o755)
    spool.touch(mode=0o640)
    with umask(0o022):
        daemon = observer_daemon.start(DAEMON.format(url=gateway.url))
    assert daemon.stop() == 0
    assert mode(out / "ops.jsonl") == 0o644
    assert mode(out / "rows.jsonl") == 0o600  # file_mode is for new files only
    assert mode(spool) == 0o640
    assert mode(spool.parent) == 0o755


def test_a_symlinked_lock_is_refused_and_its_target_untouched(observer_daemon, tmp_path):
    target = victim(tmp_path)
    state = observer_daemon.directory / "state"
    state.mkdir()
    (state / "observer.lock").symlink_to(target)
    observer_daemon.write_config('[observer]\nstate_dir = "state"\n[sinks.console]\n')
    result = observer_daemon.run("run", "--once", "--config", "observer.toml")
    assert result.returncode == 1
    assert f"{state / 'observer.lock'}: is a symbolic link" in result.stderr
    assert target.read_bytes() == PRECIOUS


def test_a_symlinked_spool_stops_the_daemon_and_its_target_is_not_truncated(
    observer_daemon, tmp_path
):
    target = victim(tmp_path)
    spool = observer_daemon.directory / "state" / "sinks.gw" / "spool.jsonl"
    spool.parent.mkdir(parents=True)
    spool.symlink_to(target)
    observer_daemon.write_config(
        '[observer]\nstate_dir = "state"\n[sinks.gw]\nplugin = "gateway_log"\n'
    )
    result = observer_daemon.run("run", "--once", "--config", "observer.toml")
    assert result.returncode == 1
    assert f"is a symbolic link; refusing to follow it ({spool})" in result.stderr
    assert "Traceback" not in result.stderr
    assert target.read_bytes() == PRECIOUS


# -- the helpers, on real files ------------------------------------------------------


def test_state_store_refuses_a_symlinked_state_file(tmp_path):
    target = victim(tmp_path)
    store = StateStore(tmp_path / "state" / "sources.tail")
    store.make_root()
    store.path("cursor.json").symlink_to(target)
    with pytest.raises(SymlinkRefused, match=r"cursor\.json: is a symbolic link"):
        store.load("cursor.json", dict, {})
    with pytest.raises(SymlinkRefused, match=r"cursor\.json: is a symbolic link"):
        store.save_sync("cursor.json", {"offset": 1})
    assert store.path("cursor.json").is_symlink()
    assert target.read_bytes() == PRECIOUS


def test_atomic_write_refuses_a_symlinked_temporary(tmp_path):
    target = victim(tmp_path)
    (tmp_path / ".state.json.tmp").symlink_to(target)
    with pytest.raises(SymlinkRefused, match=r"\.state\.json\.tmp: is a symbolic link"):
        write_private_atomic(tmp_path / "state.json", b"{}")
    assert target.read_bytes() == PRECIOUS
    assert not (tmp_path / "state.json").exists()


def test_atomic_write_creates_0600_and_keeps_an_existing_mode(tmp_path):
    with umask(0o000):
        write_private_atomic(tmp_path / "new.json", b"1")
        (tmp_path / "old.json").touch(mode=0o640)
        write_private_atomic(tmp_path / "old.json", b"2")
    assert mode(tmp_path / "new.json") == 0o600
    assert mode(tmp_path / "old.json") == 0o640
    assert (tmp_path / "old.json").read_bytes() == b"2"


def test_a_stale_temporary_from_a_crash_is_replaced(tmp_path):
    (tmp_path / ".state.json.tmp").write_bytes(b"torn")
    write_private_atomic(tmp_path / "state.json", b"whole")
    assert (tmp_path / "state.json").read_bytes() == b"whole"
    assert not (tmp_path / ".state.json.tmp").exists()


def test_lock_is_0600_and_refuses_a_symlink(tmp_path):
    with umask(0o000):
        lock = StateDirLock(tmp_path / "a" / "state")
        lock.acquire()
        lock.release()
    assert mode(tmp_path / "a" / "state" / "observer.lock") == 0o600
    assert mode(tmp_path / "a" / "state") == 0o700
    assert mode(tmp_path / "a") == 0o777  # above state_dir: the umask decides
    target = victim(tmp_path)
    other = tmp_path / "b"
    other.mkdir()
    (other / "observer.lock").symlink_to(target)
    with pytest.raises(SymlinkRefused):
        StateDirLock(other).acquire()
    assert target.read_bytes() == PRECIOUS


def test_make_private_dir_makes_0700_from_top_down_only(tmp_path):
    with umask(0o022):
        make_private_dir(tmp_path / "up" / "state" / "sinks.x", top=tmp_path / "up" / "state")
    assert mode(tmp_path / "up") == 0o755
    assert mode(tmp_path / "up" / "state") == 0o700
    assert mode(tmp_path / "up" / "state" / "sinks.x") == 0o700


def test_open_private_creates_0600(tmp_path):
    with umask(0o000):
        os.close(open_private(tmp_path / "queue", os.O_WRONLY | os.O_CREAT))
    assert mode(tmp_path / "queue") == 0o600


@pytest.mark.parametrize(("file_mode", "expected"), [(None, 0o664), (0o640, 0o640), (0o644, 0o644)])
def test_open_output_follows_the_umask_or_the_given_mode(tmp_path, file_mode, expected):
    with umask(0o002):
        os.close(open_output(tmp_path / "out" / "ops.jsonl", os.O_WRONLY, file_mode))
    assert mode(tmp_path / "out" / "ops.jsonl") == expected


@pytest.mark.parametrize(("text", "value"), [("0640", 0o640), ("600", 0o600), ("0o644", 0o644)])
def test_parse_file_mode(text, value):
    assert parse_file_mode(text) == value


@pytest.mark.parametrize("text", ["rw-r-----", "0648", "4755", "", "0o7777"])
def test_parse_file_mode_rejects_with_the_key(text):
    with pytest.raises(ValueError, match=r'file_mode: expected an octal mode .* such as "0640"'):
        parse_file_mode(text)


def test_a_bad_file_mode_is_a_config_error_naming_the_key(observer_daemon):
    observer_daemon.write_config('[sinks.ops]\nplugin = "jsonl"\npath = "o"\nfile_mode = "644x"\n')
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 2
    assert "[sinks.ops] file_mode: expected an octal mode" in result.stderr


def test_open_output_writes_through_a_link_even_a_dangling_one(tmp_path):
    """Sink outputs may be links (to a log folder, say): unlike private files, followed."""
    (tmp_path / "ops.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    fd = open_output(tmp_path / "ops.jsonl", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"{}\n")
    finally:
        os.close(fd)
    assert (tmp_path / "elsewhere.jsonl").read_bytes() == b"{}\n"
