"""The ``observer-core`` command: run, check, plugins, init, reload, tap, top, replay, test."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any

import anyio

from . import __version__
from .analyzer_tests import run_files
from .cli_args import add_config_command
from .compiled import INGEST_PATH
from .config import ConfigError, ObserverConfig, default_config_path, load_config
from .describe import plugin_lines, resolved_toml
from .engine import Engine, StartupError
from .kinds import KINDS
from .logs import setup_logging
from .plugins import Registry, load_registry
from .records import parse_timestamp
from .reload_cli import COMMANDS as RELOAD_COMMANDS
from .reload_cli import add_command as add_reload_command
from .replay import ReplayOptions, replay
from .state import StateDirLock, StateLocked
from .watch import COMMANDS as WATCH_COMMANDS
from .watch import add_commands as add_watch_commands

__all__ = ["main"]

log = logging.getLogger("observer_core")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="observer-core",
        description="Watch what AI agents and their gateway do, learn from it, feed it back.",
    )
    parser.add_argument("--version", action="version", version=f"observer-core {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    config_help = "config file (default: $OBSERVER_CONFIG, else ./observer.toml)"

    run = add_config_command(
        commands,
        "run",
        summary="run the daemon",
        description="Run the daemon.",
        config_help=config_help,
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="start no listener: poll the per-cycle sources, run the every=1 analyzers, "
        "flush the sinks and exit",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info)",
    )
    run.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="log format (default: text)"
    )

    check = add_config_command(
        commands,
        "check",
        summary="validate a config and show the pipeline",
        description="Validate a config and print the resolved pipeline.",
        config_help=config_help,
    )
    check.add_argument(
        "--resolved",
        action="store_true",
        help="print the whole config with every default filled in, as TOML (secrets masked)",
    )

    plugins = commands.add_parser(
        "plugins",
        help="list installed plugins",
        description="List every installed plugin by kind, with the distribution providing it.",
    )
    plugins.add_argument("name", nargs="?", help="show one plugin in detail")
    plugins.add_argument(
        "--verbose", "-v", action="store_true", help="show version, summary and config keys"
    )

    init = commands.add_parser(
        "init",
        help="write the default config",
        description="Write the shipped default config, commented, to PATH.",
    )
    init.add_argument(
        "path", nargs="?", type=Path, default=Path("observer.toml"), help="default: ./observer.toml"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    add_reload_command(commands, config_help)
    add_watch_commands(commands, config_help)
    _add_offline_commands(commands, config_help)
    return parser


def _add_offline_commands(commands: Any, config_help: str) -> None:
    """``replay`` (ANALYSIS §14.1) and ``test`` (§14.2): analyzers run offline."""
    replay = add_config_command(
        commands,
        "replay",
        summary="run the analyzers over recorded ops",
        description="Run the configured analyzers over recorded ops (JSONL, .gz too) on "
        "virtual cycles and write their findings as JSONL. Nothing is called (each call "
        "is written as a would_call line), nothing reaches the sinks or state_dir: it "
        "may run beside the daemon.",
        config_help=config_help,
    )
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE", help="ops, in order")
    replay.add_argument(
        "--analyzers", metavar="NAME,...", help="run these instances (default: the enabled ones)"
    )
    replay.add_argument("--from", dest="since", metavar="TS", help="skip ops before TS")
    replay.add_argument("--to", dest="until", metavar="TS", help="skip ops after TS")
    calls = replay.add_mutually_exclusive_group()
    calls.add_argument(
        "--call-services", action="store_true", help="really call the configured services"
    )
    calls.add_argument(
        "--dry-run", action="store_true", help="call nothing (the default): write would_call lines"
    )
    replay.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="FILE",
        help="write the findings here (default: stdout)",
    )

    test = add_config_command(
        commands,
        "test",
        summary="run analyzer tests written in TOML",
        description="Run analyzer tests written in TOML, offline, with canned replies for "
        "every outbound call. Exit 0 when all pass, 1 when one fails, 2 when a test file "
        "cannot be used.",
        config_help="config of tests that name none (default: $OBSERVER_CONFIG, else "
        "./observer.toml)",
    )
    test.add_argument("files", nargs="+", type=Path, metavar="FILE", help="test files")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "run": _run,
        "check": _check,
        "plugins": _plugins,
        "init": _init,
        **RELOAD_COMMANDS,
        **WATCH_COMMANDS,
        "replay": _replay,
        "test": _test,
    }[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"observer-core: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # e.g. `observer-core check | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a path the user gave that cannot be used: one line, no traceback
        print(f"observer-core: {_reason(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def _load(args: argparse.Namespace) -> tuple[ObserverConfig, Registry]:
    registry = load_registry()
    path = args.config or default_config_path()
    config = load_config(path, registry)
    return config, registry


def _report_plugin_errors(registry: Registry) -> None:
    for error in registry.errors:
        log.warning("plugin not loaded: %s", error)


def _run(args: argparse.Namespace) -> int:
    # Until the daemon watches for them, SIGHUP and SIGUSR1 must not end it (their default).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    setup_logging(args.log_level, args.log_format)
    config, registry = _load(args)
    _report_plugin_errors(registry)
    for warning in config.warnings(registry):
        log.warning("%s", warning)
    lock = StateDirLock(config.state_dir)
    try:
        lock.acquire()
    except StateLocked as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except OSError as exc:
        log.error("cannot use state_dir %s: %s", config.state_dir, exc)
        return EXIT_FAILURE
    log.info(
        "observer-core %s starting (ingest path %s): config %s, state_dir %s, cycle %ss",
        __version__,
        INGEST_PATH,
        config.path,
        config.state_dir,
        config.settings.cycle_secs,
    )
    engine = Engine(config)
    engine.config_loader = partial(load_config, config.path, registry)
    try:
        backend, options = _backend()
        if args.once:
            return anyio.run(engine.run_once, backend=backend, backend_options=options)
        anyio.run(engine.serve, backend=backend, backend_options=options)
        return EXIT_OK
    except StartupError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    finally:
        lock.release()


def _backend() -> tuple[str, dict[str, object]]:
    """asyncio, on uvloop when it is installed (it is, except on Windows)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio", {}
    return "asyncio", {"use_uvloop": True}


def _check(args: argparse.Namespace) -> int:
    config, registry = _load(args)
    if args.resolved:
        sys.stdout.write(resolved_toml(config))
    else:
        print(f"{config.path}: valid")
        print(f"  state_dir  {config.state_dir}")
        settings = config.settings
        print(f"  cycle      every {settings.cycle_secs}s, ring of {settings.ring_size} ops")
        for kind in KINDS:
            items = [item for item in config.instances if item.kind == kind]
            if not items:
                continue
            print(f"{kind}:")
            for item in items:
                extra = ""
                if item.kind == "sinks":
                    extra = f" accepts={','.join(item.accepts)}"
                elif item.kind == "analyzers":
                    extra = f" every={item.every}"
                state = "" if item.enabled else " (disabled)"
                print(
                    f"  {item.name:<16} plugin={item.plugin.name} from "
                    f"{item.plugin.origin.distribution}{extra}{state}"
                )
    for warning in config.warnings(registry):
        print(f"warning: {warning}", file=sys.stderr)
    for error in registry.errors:
        print(f"warning: plugin not loaded: {error}", file=sys.stderr)
    return EXIT_OK


def _plugins(args: argparse.Namespace) -> int:
    registry = load_registry()
    found = False
    for kind in KINDS:
        infos = [registry.components[kind][name] for name in registry.names(kind)]
        if args.name:
            infos = [info for info in infos if info.name == args.name]
        if not infos:
            continue
        found = True
        print(f"{kind}:")
        for info in infos:
            print("\n".join(plugin_lines(info, args.verbose or bool(args.name), bool(args.name))))
    errors = registry.errors
    if args.name:
        broken = registry.broken_names.get(args.name)
        errors = [broken] if broken is not None else []
    if errors:
        print("not loaded:")
        for error in errors:
            print(f"  {error}")
    if args.name and not found and not errors:
        print(f"observer-core: no plugin named {args.name!r}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.is_dir():
        print(f"observer-core: {path} is a directory; give a file path", file=sys.stderr)
        return EXIT_FAILURE
    if path.exists() and not args.force:
        print(f"observer-core: {path} exists; use --force to overwrite it", file=sys.stderr)
        return EXIT_FAILURE
    text = files("observer_core").joinpath("default.toml").read_text(encoding="utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"observer-core: cannot write {path}: {_reason(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {path}; check it with: observer-core check --config {path}")
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    setup_logging("warning")
    config, _ = _load(args)
    bounds = []
    for flag, value in (("--from", args.since), ("--to", args.until)):
        try:
            bounds.append(None if value is None else parse_timestamp(value))
        except ValueError as exc:
            print(f"observer-core: {flag}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    names = None if args.analyzers is None else [n for n in args.analyzers.split(",") if n]
    options = ReplayOptions(args.files, names, bounds[0], bounds[1], args.call_services)
    with contextlib.ExitStack() as stack:
        out = (
            sys.stdout.buffer
            if args.output is None
            else stack.enter_context(args.output.open("wb"))
        )
        try:
            summary = anyio.run(replay, config, options, out)
        except StartupError as exc:
            print(f"observer-core: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        out.flush()
    print(summary.line(bounded=any(bounds)), file=sys.stderr)
    return EXIT_FAILURE if summary.errors else EXIT_OK


def _test(args: argparse.Namespace) -> int:
    setup_logging("critical")
    registry = load_registry()
    default = args.config or default_config_path()
    return anyio.run(run_files, args.files, registry, default, print)


def _reason(exc: OSError) -> str:
    """An OS error as one phrase, naming the path it concerns when that is not the
    one the message already names: ``No such file or directory: /proc/nope``."""
    reason = exc.strerror or type(exc).__name__
    return f"{reason}: {exc.filename}" if exc.filename is not None else reason
