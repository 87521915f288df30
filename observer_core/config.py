"""Loading ``observer.toml``: environment substitution, parsing, validation.

Two phases. First the raw text has ``${VAR}`` / ``${VAR:-default}``
substituted (outside ``#`` comments; ``$${`` writes a literal ``${``) and is
parsed with :mod:`tomllib` into ``[observer]`` settings and ``[KIND.INSTANCE]``
tables. Then each instance's table is checked against its plugin's ``Config``
struct. Every problem is a :class:`ConfigError` whose one-line message names
the file, the table and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import tomli_w
from msgspec import Meta

from .components import AnalyzerConfig, ComponentConfig, SinkConfig
from .plugins import KINDS, PluginInfo, Registry
from .redact import redact_config

__all__ = [
    "ConfigError",
    "InstanceConfig",
    "ObserverConfig",
    "ObserverSettings",
    "default_config_path",
    "load_config",
    "substitute_env",
]

_T = TypeVar("_T")
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` is the one line to show the user."""

    def __init__(self, message: str) -> None:
        # A key or table name may hold a newline ("a\nb" = 1): keep the message one line.
        super().__init__(_CONTROL.sub(lambda found: repr(found.group())[1:-1], message))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ObserverSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[observer]`` table."""

    cycle_secs: Annotated[int, Meta(gt=0)] | Annotated[float, Meta(gt=0)] = 30
    ring_size: Annotated[int, Meta(ge=1)] = 2000
    state_dir: str = "data/_observer/state"
    max_field_bytes: Annotated[int, Meta(ge=1)] = 65536
    shutdown_timeout_secs: Annotated[int, Meta(gt=0)] | Annotated[float, Meta(gt=0)] = 10


@dataclass
class InstanceConfig:
    """One ``[KIND.INSTANCE]`` table, validated against its plugin."""

    kind: str
    name: str
    plugin: PluginInfo
    enabled: bool
    config: ComponentConfig

    @property
    def qualified(self) -> str:
        """``sources.http``: how logs, metrics and errors name this instance."""
        return f"{self.kind}.{self.name}"

    @property
    def every(self) -> int:
        return self.config.every if isinstance(self.config, AnalyzerConfig) else 1

    @property
    def accepts(self) -> list[str]:
        return list(self.config.accepts) if isinstance(self.config, SinkConfig) else []


@dataclass
class ObserverConfig:
    """A loaded, validated ``observer.toml``."""

    path: Path
    settings: ObserverSettings
    instances: list[InstanceConfig] = field(default_factory=list)
    row_formats: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    """The registry's row formats, handed to each component's context."""

    @property
    def config_dir(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        state = Path(self.settings.state_dir).expanduser()
        return state if state.is_absolute() else self.config_dir / state

    def enabled(self, kind: str) -> list[InstanceConfig]:
        return [item for item in self.instances if item.kind == kind and item.enabled]

    def warnings(self, registry: Registry) -> list[str]:
        """Finding kinds an enabled analyzer emits that reach no enabled sink."""
        accepted = {kind for sink in self.enabled("sinks") for kind in sink.accepts}
        notes = []
        for analyzer in self.enabled("analyzers"):
            for kind in getattr(analyzer.plugin.cls, "emits", ()):
                if kind not in accepted:
                    notes.append(
                        f"{self.path.name}: [{analyzer.qualified}] emits {kind!r} findings "
                        f"but no enabled sink accepts {kind!r}"
                    )
        return notes

    def to_toml(self, *, mask_secrets: bool = True) -> str:
        """The whole config with every default filled in, as TOML.

        Unset values (``None``) are left out, at any depth, since TOML has no
        null; with ``mask_secrets`` every secret is masked (see :mod:`observer_core.redact`).
        """
        settings = msgspec.to_builtins(self.settings)
        document: dict[str, Any] = {
            "observer": _resolved(redact_config(settings) if mask_secrets else settings)
        }
        for item in self.instances:
            table = {
                "plugin": item.plugin.name,
                "enabled": item.enabled,
                **msgspec.to_builtins(item.config),
            }
            shown = redact_config(table) if mask_secrets else table
            document.setdefault(item.kind, {})[item.name] = _resolved(shown)
        return tomli_w.dumps(document)


def _resolved(value: Any) -> Any:
    """``value`` ready for TOML: no ``None`` anywhere."""
    if isinstance(value, dict):
        return {key: _resolved(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_resolved(item) for item in value if item is not None]
    return value


def default_config_path() -> Path:
    """``$OBSERVER_CONFIG`` when set, else ``./observer.toml``."""
    return Path(os.environ.get("OBSERVER_CONFIG") or "observer.toml")


def substitute_env(text: str, environ: Mapping[str, str], source: str = "config") -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` outside ``#`` comments.

    The default applies when VAR is unset or empty; ``$${`` writes ``${``.
    An unset VAR without a default raises :class:`ConfigError` naming it.
    """
    out: list[str] = []
    position = 0
    for start, end in _comment_spans(text):
        out.append(_substitute(text, position, start, environ, source))
        out.append(text[start:end])
        position = end
    out.append(_substitute(text, position, len(text), environ, source))
    return "".join(out)


def _comment_spans(text: str) -> list[tuple[int, int]]:
    """Where the ``#`` comments are, skipping ``#`` inside TOML strings."""
    spans = []
    index, quote, length = 0, "", len(text)
    while index < length:
        if quote:
            if quote in ('"', '"""') and text[index] == "\\":
                index += 2
                continue
            if text.startswith(quote, index):
                index += len(quote)
                quote = ""
                continue
            if text[index] == "\n" and len(quote) == 1:
                quote = ""
            index += 1
            continue
        char = text[index]
        if char == "#":
            end = text.find("\n", index)
            end = length if end < 0 else end
            spans.append((index, end))
            index = end
        elif char in "\"'":
            quote = char * 3 if text.startswith(char * 3, index) else char
            index += len(quote)
        else:
            index += 1
    return spans


def _substitute(text: str, start: int, end: int, environ: Mapping[str, str], source: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is not None:
            return value
        line = text.count("\n", 0, start + match.start()) + 1
        raise ConfigError(
            f"{source}: line {line}: environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}})"
        )

    return _VAR.sub(replace, text[start:end])


def load_config(
    path: Path, registry: Registry, environ: Mapping[str, str] | None = None
) -> ObserverConfig:
    """Read, substitute, parse and validate ``path``. Raises :class:`ConfigError`."""
    label = path.name
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (write one with `observer-core init {path}`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    text = substitute_env(raw, os.environ if environ is None else environ, label)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from None
    unknown = [key for key in document if key not in ("observer", *KINDS)]
    if unknown:
        raise ConfigError(
            f"{label}: [{unknown[0]}]: unknown table (known: observer, {', '.join(KINDS)})"
        )
    settings = _convert(document.get("observer", {}), ObserverSettings, f"{label}: [observer]")
    config = ObserverConfig(
        path=path.resolve(), settings=settings, row_formats=dict(registry.row_formats)
    )
    for kind in KINDS:
        tables = document.get(kind, {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{label}: {kind}: expected tables like [{kind}.NAME]")
        for name, table in tables.items():
            config.instances.append(_instance(label, kind, name, table, registry))
    return config


def _instance(label: str, kind: str, name: str, table: Any, registry: Registry) -> InstanceConfig:
    where = f"{label}: [{kind}.{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    table = dict(table)
    plugin_name = table.pop("plugin", name)
    enabled = table.pop("enabled", True)
    if not isinstance(plugin_name, str):
        raise ConfigError(f"{where} plugin: expected a string, got {type(plugin_name).__name__}")
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where} enabled: expected true or false, got {enabled!r}")
    plugin = registry.get(kind, plugin_name)
    if plugin is None:
        broken = registry.broken_names.get(plugin_name)
        if broken is not None:
            raise ConfigError(f"{where} plugin: {plugin_name!r} failed to load: {broken}")
        installed = ", ".join(registry.names(kind)) or "none"
        raise ConfigError(
            f"{where} plugin: unknown {kind[:-1]} plugin {plugin_name!r} (installed: {installed})"
        )
    try:
        config = _convert(table, plugin.cls.Config, where)
        plugin.cls.validate_config(config, registry)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{where} {exc}") from None
    except Exception as exc:  # a plugin's check failing another way is still a config error
        raise ConfigError(f"{where} {type(exc).__name__}: {exc}") from None
    if isinstance(config, SinkConfig):
        for record_kind in config.accepts:
            if record_kind not in registry.record_kinds:
                known = ", ".join(sorted(registry.record_kinds))
                raise ConfigError(
                    f"{where} accepts: unknown record kind {record_kind!r} (known: {known})"
                )
    if isinstance(config, AnalyzerConfig) and config.every < 1:
        raise ConfigError(f"{where} every: must be 1 or more, got {config.every}")
    return InstanceConfig(kind, name, plugin, enabled, config)


_MSGSPEC_PATH = re.compile(r"^(.*?) - at `\$\.?([^`]*)`$", re.S)
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `([^`]*)`$")


def _convert(table: Any, schema: type[_T], where: str) -> _T:
    try:
        return msgspec.convert(table, schema)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where} {_explain(str(exc), schema)}") from None


def _explain(message: str, schema: type) -> str:
    key = ""
    match = _MSGSPEC_PATH.match(message)
    if match:
        message, key = match.groups()
    if found := _UNKNOWN_FIELD.match(message):
        name = f"{key}.{found.group(1)}" if key else found.group(1)
        known = ", ".join(info.encode_name for info in msgspec.structs.fields(schema))
        return f"{name}: unknown key (known keys: {known})"
    if found := _MISSING_FIELD.match(message):
        name = f"{key}.{found.group(1)}" if key else found.group(1)
        return f"{name}: required key is missing"
    return f"{key}: {message}" if key else message
