"""The ``jsonl_tail`` source: follow a JSONL file, once per cycle.

Each poll reads what was appended since the last one, in bounded chunks, maps
each line to an op with the configured row format and hands the ops on; the
byte cursor is saved under ``state_dir`` only after ``emit`` accepted them, so
a restart neither skips nor (after a clean stop) re-reads a line. A trailing
line without its newline waits for the next poll. Truncation, in-place
rewrites and rotation are noticed (a file is known by device, inode and a hash
of its first bytes); a file rotated away is finished before the new one is
read from its start. Lines that are not JSON or do not map are skipped,
counted and logged with their file and byte offset.
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any, ClassVar, Literal

import anyio

from observer_core import (
    ComponentConfig,
    Context,
    Emit,
    RegisterRowFormat,
    RegisterSource,
    Source,
    hookimpl,
)

from .formats import LineFormat, OpFormat, line_format_for, overseer_correction
from .reader import (
    Chunk,
    Cursor,
    TailState,
    TrackedFile,
    find_file,
    identity_of,
    open_file,
    open_matching,
    read_chunk,
)

__all__ = ["JsonlTailConfig", "JsonlTailSource"]

Notes = list[tuple[int, str]]
"""What a look at the file found worth logging: ``(level, message)``."""

STATE_FILE = "cursor.json"
POLL_BUDGET_SECS = 5.0
"""A poll stops starting new chunks after this long (the rest waits for the next cycle),
well inside the engine's per-step timeout."""
COMMIT_TIMEOUT_SECS = 10.0
"""How long handing one chunk's ops on (and saving the cursor) may take."""
SAVE_EVERY_SECS = 0.5
"""While a backlog is read, the cursor is saved about this often, not per chunk (a save is two
fsyncs); it is always saved after a poll's last chunk and at shutdown."""
SKIPS_LOGGED_PER_POLL = 5
"""Skipped lines logged one by one per poll; the rest are summed up in one line."""
MAX_ROTATED = 8
"""Rotated files still being finished at once; past this the oldest is let go."""


class JsonlTailConfig(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    """Keys of ``[sources.NAME]`` with ``plugin = "jsonl_tail"``."""

    path: str
    """The JSONL file to follow. Relative to the config file's folder."""
    format: str = "op"
    """The row format: ``op``, ``overseer_correction``, or one a plugin registers."""
    read_from: Literal["start", "end"] = "start"
    """Where to start in a file never read before that exists at start-up."""


class JsonlTailSource(Source):
    """Follows a JSONL file, mapping each new line to an op with a named row format."""

    name: ClassVar[str] = "jsonl_tail"
    Config = JsonlTailConfig
    config: JsonlTailConfig

    @classmethod
    def validate_config(cls, config: Any, registry: Any) -> None:
        _check_format(config.format, registry.row_formats)

    def __init__(self, config: JsonlTailConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.path = ctx.resolve_path(config.path)
        self._lines: LineFormat | None = None
        self._current: TrackedFile | None = None
        self._rotated: list[TrackedFile] = []
        self._restore: TailState | None = None
        self._last_saved: TailState | None = None
        self._from_end = False
        self._handed_on = 0
        self._skipped = 0
        self._skips_logged = 0
        self._skips_unlogged = 0
        self._error: str | None = None
        self._save_failing = False
        self._saved_at = 0.0
        self._skip_counter = ctx.metrics.counter(
            "observer_tail_lines_skipped_total",
            "Lines a jsonl_tail skipped: not JSON, or not mappable by its format.",
        )
        self._line_counter = ctx.metrics.counter(
            "observer_tail_lines_total", "Lines a jsonl_tail handed on as ops."
        )

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """Resolve the row format and load the saved cursor (the file may not exist yet)."""
        formats = self.ctx.row_formats
        _check_format(self.config.format, formats)
        self._lines = line_format_for(
            self.config.format, formats[self.config.format], self.ctx.max_field_bytes
        )
        saved = self.ctx.state.load(STATE_FILE, TailState, TailState(path=""))
        if saved.path == str(self.path):
            self._restore = self._last_saved = saved
        elif saved.path:
            self.ctx.logger.info(
                "saved cursor was for %s, not %s: starting afresh", saved.path, self.path
            )
        seen_before = self._restore is not None and (
            self._restore.current is not None or bool(self._restore.rotated)
        )
        self._from_end = self.config.read_from == "end" and not seen_before
        self._report()

    async def aclose(self) -> None:
        await self._save()  # the cursor of chunks handed on since the last save
        files = [*self._rotated, *([self._current] if self._current else [])]
        for tracked in files:
            await anyio.to_thread.run_sync(tracked.close)

    # -- one poll -----------------------------------------------------------

    async def poll(self, emit: Emit) -> None:
        """Read what was appended (rotated-away files first) and hand it on."""
        deadline = anyio.current_time() + POLL_BUDGET_SECS
        self._skips_logged = self._skips_unlogged = 0
        try:
            for level, note in await anyio.to_thread.run_sync(self._look):
                self.ctx.logger.log(level, "%s", note)
            await self._save()
            if await self._drain_rotated(emit, deadline) and self._current is not None:
                await self._drain(self._current, emit, deadline)
            self._recovered()
        except TimeoutError:  # an OSError too, but ours: emit took too long
            self.ctx.error(
                "handing ops on took over %ss; those lines are read again next cycle",
                COMMIT_TIMEOUT_SECS,
            )
        except OSError as exc:
            self._fail(exc)
        finally:
            self._summarise_skips()
            self._report()

    def _look(self) -> Notes:
        """(In a thread.) Notice rotation, truncation and rewrites; open the file at ``path``."""
        notes: Notes = []
        identity = identity_of(self.path)
        if self._restore is not None:
            self._reopen_saved(self._restore, identity, notes)
            self._restore = None
        current = self._current
        if current is not None and identity != current.identity:
            now = "no file" if identity is None else "another file"
            notes.append(
                (INFO, f"{current.name} was rotated away ({now} at that path now); finishing it")
            )
            self._add_rotated(current, notes)
            self._current = None
        if self._current is None and identity is not None:
            self._current = self._open_current(notes)
        elif self._current is not None and (change := self._current.changed_in_place()):
            notes.append((INFO, f"{self.path} was {change}: reading it again from its start"))
        self._from_end = False
        return notes

    def _reopen_saved(
        self, saved: TailState, identity: tuple[int, int] | None, notes: Notes
    ) -> None:
        """Find again the files the saved state names: at ``path``, or renamed beside it."""
        cursors = [*saved.rotated, *([saved.current] if saved.current else [])]
        tracked = {item.identity for item in self._rotated}  # found before an error, if any
        for cursor in cursors:
            if (cursor.dev, cursor.ino) in tracked:
                continue
            found = self._find(cursor, identity)
            if found is None:
                notes.append(
                    (
                        WARNING,
                        f"the file read before (device {cursor.dev}, inode {cursor.ino}, "
                        f"{cursor.offset} bytes read) was deleted or rewritten while stopped",
                    )
                )
            elif found.identity == identity:
                self._current = found
            else:
                notes.append((INFO, f"{found.name} was rotated away while stopped; finishing it"))
                self._add_rotated(found, notes)

    def _find(self, cursor: Cursor, identity: tuple[int, int] | None) -> TrackedFile | None:
        if identity != (cursor.dev, cursor.ino):
            return find_file(self.path.parent, cursor)
        return open_matching(self.path, cursor)

    def _open_current(self, notes: Notes) -> TrackedFile | None:
        tracked = open_file(self.path)
        if tracked is not None and self._from_end:
            tracked.start_at_last_line()
            notes.append((INFO, f"read_from = end: starting {self.path} at byte {tracked.offset}"))
        return tracked

    def _add_rotated(self, tracked: TrackedFile, notes: Notes) -> None:
        tracked.idle_polls = -1  # read it on at least one more poll before letting it go
        self._rotated.append(tracked)
        while len(self._rotated) > MAX_ROTATED:
            oldest = self._rotated.pop(0)
            notes.append((WARNING, f"too many rotated files to finish: gave up on {oldest.name}"))
            oldest.close()

    # -- reading and handing on -----------------------------------------------

    async def _drain_rotated(self, emit: Emit, deadline: float) -> bool:
        """Finish rotated-away files; let go of those idle for a poll. True when all got to EOF."""
        for tracked in list(self._rotated):
            if not await self._drain(tracked, emit, deadline):
                return False
            if tracked.idle_polls >= 1:
                rest = await anyio.to_thread.run_sync(_finish, tracked)
                self._rotated.remove(tracked)
                if rest:
                    reason = f"unterminated last line ({rest} bytes) in a file rotated away"
                    self._skip(tracked.name, tracked.offset, reason)
                self.ctx.logger.info("finished %s (rotated away)", tracked.name)
                await self._save()
        return True

    async def _drain(self, tracked: TrackedFile, emit: Emit, deadline: float) -> bool:
        """Read ``tracked`` to its end, chunk by chunk. False when the poll's time ran out first."""
        assert self._lines is not None
        moved = False
        while True:
            chunk = await anyio.to_thread.run_sync(
                read_chunk, tracked.fd, tracked.offset, tracked.discarding, self._lines
            )
            if chunk.end == tracked.offset and chunk.discarding == tracked.discarding:
                break
            moved = True
            out_of_time = anyio.current_time() >= deadline
            await self._commit(tracked, chunk, emit, last=chunk.eof or out_of_time)
            if chunk.eof:
                break
            if out_of_time:
                tracked.idle_polls = 0
                return False
        tracked.size = max(tracked.size, tracked.offset)
        tracked.idle_polls = 0 if moved else tracked.idle_polls + 1
        return True

    async def _commit(self, tracked: TrackedFile, chunk: Chunk, emit: Emit, last: bool) -> None:
        """Hand the chunk's ops on, then move and save the cursor (not interrupted by shutdown).

        When ``emit`` raises (e.g. NotAccepted), the cursor stays: the lines are read again.
        Only the ``last`` chunk of a poll is sure to be saved at once (see SAVE_EVERY_SECS).
        """
        with anyio.fail_after(COMMIT_TIMEOUT_SECS, shield=True):
            if chunk.ops:
                await emit(chunk.ops)
                self._handed_on += len(chunk.ops)
                self._line_counter.inc(len(chunk.ops), instance=self.ctx.instance)
            tracked.offset, tracked.discarding = chunk.end, chunk.discarding
            for offset, reason in chunk.skipped:
                self._skip(tracked.name, offset, reason)
            if last or anyio.current_time() - self._saved_at >= SAVE_EVERY_SECS:
                await self._save()

    async def _save(self) -> None:
        current = self._current.cursor() if self._current else None
        state = TailState(str(self.path), current, [item.cursor() for item in self._rotated])
        never_saved = self._last_saved is None and current is None and not state.rotated
        if never_saved or state == self._last_saved:
            return
        self._saved_at = anyio.current_time()
        try:
            await self.ctx.state.save(STATE_FILE, state)
        except OSError as exc:
            if not self._save_failing:
                self.ctx.error(
                    "cannot save the cursor (lines may be read again after a restart): %s", exc
                )
            self._save_failing = True
            return
        if self._save_failing:
            self.ctx.logger.info("saving the cursor works again")
            self._save_failing = False
        self._last_saved = state

    # -- reporting ------------------------------------------------------------

    def _skip(self, name: str, offset: int, reason: str) -> None:
        self._skipped += 1
        self._skip_counter.inc(instance=self.ctx.instance)
        if self._skips_logged < SKIPS_LOGGED_PER_POLL:
            self._skips_logged += 1
            self.ctx.logger.warning(
                "%s: skipped the line at byte %d: %s", name, offset, reason[:300]
            )
        else:
            self._skips_unlogged += 1

    def _summarise_skips(self) -> None:
        if self._skips_unlogged:
            self.ctx.logger.warning(
                "%s: skipped %d more lines in this poll (the first %d of each poll are logged)",
                self.path,
                self._skips_unlogged,
                SKIPS_LOGGED_PER_POLL,
            )

    def _fail(self, exc: OSError) -> None:
        message = f"{exc.strerror or exc} ({exc.filename or self.path})"
        if message != self._error:
            self.ctx.error("cannot read: %s", message)
        self._error = message

    def _recovered(self) -> None:
        if self._error is not None:
            self.ctx.logger.info("%s can be read again", self.path)
            self._error = None

    def _report(self) -> None:
        current = self._current
        state = "error" if self._error else "following" if current else "waiting for file"
        status = self.ctx.status
        status.update(
            path=str(self.path),
            state=state,
            offset=current.offset if current else 0,
            size=current.size if current else 0,
            lines=self._handed_on,
            skipped=self._skipped,
        )
        if self._error:
            status["error"] = self._error
        else:
            status.pop("error", None)
        if self._rotated:
            status["rotated"] = [
                {"file": item.name, "offset": item.offset} for item in self._rotated
            ]
        else:
            status.pop("rotated", None)


def _finish(tracked: TrackedFile) -> int:
    """Close a rotated file; return the bytes of an unterminated last line left unread."""
    try:
        return tracked.unterminated_bytes()
    finally:
        tracked.close()


def _check_format(name: str, formats: Any) -> None:
    if name not in formats:
        known = ", ".join(sorted(formats)) or "none installed"
        raise ValueError(f"format: unknown row format {name!r} (known: {known})")


@hookimpl
def observer_register_sources(register: RegisterSource) -> None:
    register(JsonlTailSource)


@hookimpl
def observer_register_row_formats(register: RegisterRowFormat) -> None:
    register("op", OpFormat())
    register("overseer_correction", overseer_correction)
