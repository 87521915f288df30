"""``observer-core tap`` and ``observer-core top``: watch a running daemon (contract §12.3, §12.4).

Both talk to the daemon's ``http`` (else ``status``) source over HTTP: ``--url``, or the
address of that source in the config. The token comes from ``$OBSERVER_TOKEN`` or
``--token-file``, never from the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .config import ConfigError, default_config_path, load_config
from .plugins import load_registry

__all__ = ["COMMANDS", "add_commands", "render_frame"]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_decode = msgspec.json.Decoder().decode


def add_commands(commands: Any, config_help: str) -> None:
    """Register ``tap`` and ``top`` on the ``observer-core`` sub-command parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="the daemon's http or status source (default: from the config)"
    )
    common.add_argument("--config", type=Path, help=config_help + "; only to find --url")
    common.add_argument(
        "--token-file",
        type=Path,
        help="file holding the bearer token (default: $OBSERVER_TOKEN; never on the command line)",
    )
    tap = commands.add_parser(
        "tap",
        parents=[common],
        help="print records as they flow through a running daemon",
        description="Stream ops and findings from GET /tap until Ctrl-C (or --limit).",
    )
    tap.add_argument("--kind", help="record kinds, comma-separated (op, diagnosis, ...)")
    tap.add_argument("--source", help="only this source")
    tap.add_argument("--endpoint", help="only endpoints matching this glob (e.g. '/v1/*')")
    tap.add_argument("--staffer-id", help="only this staffer_id")
    tap.add_argument("--sig-hash", help="only this sig_hash")
    tap.add_argument("--success", choices=["true", "false"], help="only successes or failures")
    tap.add_argument("--format", choices=["text", "json"], default="text", help="default: text")
    tap.add_argument("--limit", type=int, metavar="N", help="stop after N records")
    top = commands.add_parser(
        "top",
        parents=[common],
        help="a live full-screen summary of a running daemon",
        description="Show sources, the ring, sinks, analyzers and the newest failures and "
        "findings, refreshed every --interval seconds. q or Ctrl-C quits.",
    )
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="SECS", help="refresh period (default: 1)"
    )
    top.add_argument(
        "--once", action="store_true", help="print one frame as plain text and exit (scripts)"
    )


# -- where and how to connect -----------------------------------------------------


def _url_from_config(path: Path | None) -> str:
    """The base URL of the config's ``http`` source, else its ``status`` source."""
    config = load_config(path or default_config_path(), load_registry())
    for plugin in ("http", "status"):
        for spec in config.instances:
            if spec.enabled and spec.kind == "sources" and spec.plugin.name == plugin:
                host = str(getattr(spec.config, "host", "127.0.0.1"))
                port = int(getattr(spec.config, "port", 0))
                host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
                return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    raise ConfigError(f"{config.path}: no http or status source to connect to; give --url")


def _headers(token_file: Path | None) -> dict[str, str]:
    if token_file is not None:
        token = token_file.read_text(encoding="utf-8").strip()
        if not token:
            raise ConfigError(f"{token_file}: the token file is empty")
    else:
        token = os.environ.get("OBSERVER_TOKEN", "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _target(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    url = (args.url or _url_from_config(args.config)).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must start with http:// or https://, not {url[:100]!r}")
    return url, _headers(args.token_file)


def _refusal(reply: httpx.Response) -> str:
    try:
        message = reply.json().get("error")
    except ValueError:
        message = None
    return f"HTTP {reply.status_code}: {message or reply.text[:200]}"


def clean(value: Any) -> str:
    """A client-written value for a terminal: control characters (ESC, newline) escaped."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


# -- tap --------------------------------------------------------------------------


def _tap_text(line: dict[str, Any]) -> str:
    """One readable line, as the console sink prints it."""
    record = line.get("record") or {}
    if line.get("kind") == "op":
        outcome = "ok  " if record.get("success") else "FAIL"
        error = f" error={record['error']}" if record.get("error") else ""
        return clean(
            f"{record.get('timestamp')} {outcome} [{record.get('source')}] "
            f"{record.get('endpoint')} {record.get('duration_ms')}ms "
            f"{record.get('input_summary')} -> {record.get('output_summary')}{error}"
        )
    return clean(f"[{line.get('kind')}] {msgspec.json.encode(record).decode()}")


def run_tap(args: argparse.Namespace) -> int:
    """``observer-core tap``: print the stream until Ctrl-C or ``--limit`` records."""
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be 1 or more, not {args.limit}")
    url, headers = _target(args)
    params = {
        name: value
        for name, value in (
            ("kind", args.kind),
            ("source", args.source),
            ("endpoint", args.endpoint),
            ("staffer_id", args.staffer_id),
            ("sig_hash", args.sig_hash),
            ("success", args.success),
        )
        if value is not None
    }
    printed = 0
    timeout = httpx.Timeout(10.0, read=None)
    try:
        with httpx.stream(
            "GET", f"{url}/tap", params=params, headers=headers, timeout=timeout
        ) as reply:
            if reply.status_code != 200:
                reply.read()
                print(f"observer-core tap: {url}/tap: {_refusal(reply)}", file=sys.stderr)
                return EXIT_FAILURE
            for raw in reply.iter_lines():
                if not raw:
                    continue
                line = _decode(raw)
                if not line:
                    continue  # a keep-alive
                if "dropped" in line:
                    print(
                        f"observer-core tap: {line['dropped']} record(s) dropped: this reader "
                        "fell behind",
                        file=sys.stderr,
                    )
                    continue
                print(raw if args.format == "json" else _tap_text(line), flush=True)
                printed += 1
                if args.limit is not None and printed >= args.limit:
                    return EXIT_OK
    except httpx.HTTPError as exc:
        print(f"observer-core tap: cannot reach {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"observer-core tap: {url} closed the stream", file=sys.stderr)
    return EXIT_FAILURE


# -- top --------------------------------------------------------------------------


class _Sampler:
    """Fetches ``/stats`` and turns counters into rates against the previous sample."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self._client = httpx.Client(headers=headers, timeout=5.0)
        self._previous: tuple[float, dict[str, Any]] | None = None

    def sample(self) -> tuple[dict[str, Any] | None, dict[str, Any], float, str | None]:
        """The stats, the previous ones, the seconds between, and an error (or None)."""
        try:
            reply = self._client.get(f"{self.url}/stats")
        except httpx.HTTPError as exc:
            self._previous = None
            return None, {}, 0.0, f"unreachable: {exc}"
        if reply.status_code != 200:
            self._previous = None
            return None, {}, 0.0, _refusal(reply)
        stats = reply.json()
        now = time.monotonic()
        before, seconds = {}, 0.0
        if self._previous is not None:
            seconds = now - self._previous[0]
            before = self._previous[1]
        self._previous = (now, stats)
        return stats, before, seconds, None

    def close(self) -> None:
        self._client.close()


def _rate(now: float, before: Any, seconds: float) -> str:
    if not isinstance(before, int | float) or seconds <= 0:
        return "-"
    return f"{max(0.0, (now - before) / seconds):.1f}"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _clock(timestamp: Any) -> str:
    """``HH:MM:SS`` of an ISO timestamp (what fits a narrow column)."""
    text = clean(timestamp)
    return text[11:19] if len(text) >= 19 and text[10] == "T" else text or "never"


def _budget(height: int) -> list[int]:
    """Rows for sources, sinks, analyzers, failures and findings in ``height`` lines."""
    free = max(5, height - 12)  # the title line, and a title and a header per section
    weights = [3, 3, 2, 3, 2]
    rows = [max(1, free * weight // sum(weights)) for weight in weights]
    rows[0] += max(0, free - sum(rows))
    return rows


Column = tuple[str, str]
"""A column's heading and how it sizes: ``num`` (right-aligned, as wide as its figures),
``fixed`` (as wide as its text) or ``flex`` (shares the width left over)."""


def _section(
    title: str, columns: list[Column], rows: list[list[str]], room: int
) -> list[RenderableType]:
    shown = rows[:room]
    more = f" (showing {len(shown)} of {len(rows)})" if len(rows) > len(shown) else ""
    table = Table(box=None, pad_edge=False, padding=(0, 1), expand=True, show_edge=False)
    for name, sizing in columns:
        table.add_column(
            name,
            justify="right" if sizing == "num" else "left",
            no_wrap=True,
            overflow="ellipsis",
            ratio=1 if sizing == "flex" else None,
        )
    for row in shown or [["none"] + [""] * (len(columns) - 1)]:
        table.add_row(*(Text(cell) for cell in row))
    return [Text(title + more, style="bold"), table]


def render_frame(
    url: str,
    stats: dict[str, Any] | None,
    before: dict[str, Any],
    seconds: float,
    error: str | None,
    height: int,
) -> RenderableType:
    """One screen of ``top``: what ``stats`` says, with rates against ``before``."""
    if stats is None:
        return Group(
            Text(f"observer-core top  {clean(url)}", style="bold"),
            Text(clean(error), style="bold red"),
        )
    rows = _budget(height)
    earlier_sources = before.get("sources", {})
    sources = [
        [
            clean(name),
            _rate(entry["ops"], earlier_sources.get(name, {}).get("ops"), seconds),
            _number(int(entry["ops"])),
            _rate(entry["failures"], earlier_sources.get(name, {}).get("failures"), seconds),
        ]
        for name, entry in sorted(stats.get("sources", {}).items())
    ]
    earlier_sinks = before.get("sinks", {})
    sinks = [
        [
            clean(name),
            _rate(entry["records"], earlier_sinks.get(name, {}).get("records"), seconds),
            _number(int(entry["queue"])),
            _number(int(entry["dropped"])),
            _number(int(entry["errors"])),
        ]
        for name, entry in sorted(stats.get("sinks", {}).items())
    ]
    analyzers = [
        [
            clean(name),
            _clock(run.get("last_run")),
            _number(run.get("duration_ms")),
            _number(run.get("findings")),
            _number(run.get("errors")),
        ]
        for name, run in sorted(stats.get("analyzers", {}).items())
    ]
    failures = [
        [
            _clock(item.get("ts")),
            clean(item.get("source")),
            clean(item.get("endpoint")),
            clean(item.get("error")),
        ]
        for item in stats.get("recent_failures", [])
    ]
    findings = [
        [
            _clock(item.get("ts")),
            clean(item.get("kind")),
            clean(msgspec.json.encode(item.get("data")).decode()),
        ]
        for item in stats.get("recent_findings", [])
    ]
    title = (
        f"observer-core top  {clean(url)}  ring {stats.get('total')}/{stats.get('ring_size')}"
        f"  cycle {stats.get('cycle')}  (q quits)"
    )
    parts: list[RenderableType] = [
        Text(title, style="bold reverse", no_wrap=True, overflow="ellipsis")
    ]
    parts += _section(
        "Sources",
        [("source", "flex"), ("ops/s", "num"), ("total", "num"), ("fail/s", "num")],
        sources,
        rows[0],
    )
    parts += _section(
        "Sinks",
        [
            ("sink", "flex"),
            ("rec/s", "num"),
            ("queue", "num"),
            ("dropped", "num"),
            ("errors", "num"),
        ],
        sinks,
        rows[1],
    )
    parts += _section(
        "Analyzers",
        [
            ("analyzer", "flex"),
            ("last run", "num"),
            ("ms", "num"),
            ("findings", "num"),
            ("errors", "num"),
        ],
        analyzers,
        rows[2],
    )
    parts += _section(
        "Newest failures",
        [("time", "fixed"), ("source", "flex"), ("endpoint", "flex"), ("error", "flex")],
        failures,
        rows[3],
    )
    parts += _section(
        "Newest findings",
        [("time", "fixed"), ("kind", "fixed"), ("finding", "flex")],
        findings,
        rows[4],
    )
    return Group(*parts)


def _no_keys(timeout: float) -> str:
    """Without a terminal to read keys from: wait, and report no key."""
    time.sleep(timeout)
    return ""


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """Read single keys from the terminal (cbreak mode, restored on exit): yields a
    function that waits up to N seconds for a key and returns it ('' if none came)."""
    stdin = sys.stdin
    if not stdin.isatty():
        yield _no_keys
        return
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:

        def read(timeout: float) -> str:
            ready, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, 32).decode(errors="replace") if ready else ""

        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _fit(console: Console) -> None:
    """Size ``console`` to its terminal now (it may have been resized): the terminal's own
    size wins over ``$COLUMNS``/``$LINES``, which may be stale or inherited."""
    with contextlib.suppress(OSError):
        size = os.get_terminal_size(sys.stdout.fileno())
        console.size = (size.columns, size.lines)


def run_top(args: argparse.Namespace) -> int:
    """``observer-core top``: the live view, or one plain frame with ``--once``."""
    if not 0.1 <= args.interval <= 3600:
        raise ConfigError(f"--interval must be between 0.1 and 3600 seconds, not {args.interval}")
    url, headers = _target(args)
    sampler = _Sampler(url, headers)
    try:
        if args.once:
            stats, before, seconds, error = sampler.sample()
            size = shutil.get_terminal_size((100, 40))
            console = Console(width=size.columns, color_system=None, force_terminal=False)
            console.print(render_frame(url, stats, before, seconds, error, 1000))
            return EXIT_OK if stats is not None else EXIT_FAILURE
        console = Console()
        with _keys() as key, Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                stats, before, seconds, error = sampler.sample()
                _fit(console)
                live.update(
                    render_frame(url, stats, before, seconds, error, console.size.height),
                    refresh=True,
                )
                deadline = time.monotonic() + args.interval
                while (left := deadline - time.monotonic()) > 0:
                    pressed = key(left)
                    if "q" in pressed.lower():
                        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        sampler.close()


COMMANDS: Final[dict[str, Callable[[argparse.Namespace], int]]] = {
    "tap": run_tap,
    "top": run_top,
}
"""The handlers of the sub-commands :func:`add_commands` registers."""
