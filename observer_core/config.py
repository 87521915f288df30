"""Loading ``observer.toml``: environment substitution, parsing, validation.

Two phases. First the text is parsed with :mod:`tomllib` into ``[observer]``
settings and ``[KIND.INSTANCE]`` tables, ``${VAR}`` / ``${VAR:-default}`` filled
in as values, never as TOML syntax (outside ``#`` comments; ``$${`` writes a
literal ``${``). Then each instance's table is checked against its plugin's ``Config``
struct. Every problem is a :class:`ConfigError` whose one-line message names
the file, the table and the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
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
    "exposed_listener",
    "load_config",
    "parse_toml",
]

_T = TypeVar("_T")


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
    busy_poll_us: Annotated[int, Meta(ge=0, le=10000)] = 50
    """After a commit, the event loop polls this long without sleeping (0: never)."""
    require_token: bool = False
    """A listener bound beyond loopback without a token is a config error, not a warning."""


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
    finding_kinds: frozenset[str] = frozenset()
    """The registry's finding kinds: what a tap may ask for, besides ``op``."""

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
        """Finding kinds an enabled analyzer emits that reach no enabled sink, and
        listeners bound beyond loopback without a token."""
        accepted = {kind for sink in self.enabled("sinks") for kind in sink.accepts}
        notes = []
        for item in self.instances:
            if exposed := exposed_listener(item):
                _, address, token_key = exposed
                notes.append(
                    f"{self.path.name}: [{item.qualified}] listens on {address} without a "
                    f"{token_key}: anyone who can reach it can use it (set {token_key}, or "
                    "bind a loopback address)"
                )
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


def exposed_listener(item: InstanceConfig) -> tuple[str, str, str] | None:
    """``(address key, address, token key)`` when ``item`` is an enabled listener bound
    beyond loopback without a token (contract §11.1); None otherwise.

    A plugin whose ``Config`` binds a listener says where with a class attribute
    ``listen_keys = ("host", "token")``: the key holding the address (a host, or
    ``"host:port"``; unset for no listener) and the key holding its token (any
    non-empty string, or a list with one, counts as a token).
    """
    keys: tuple[str, str] | None = getattr(item.config, "listen_keys", None)
    if not item.enabled or keys is None:
        return None
    address_key, token_key = keys
    address = getattr(item.config, address_key, None)
    if not isinstance(address, str) or _is_loopback(_bind_host(address)):
        return None
    if _has_token(getattr(item.config, token_key, None)):
        return None
    return address_key, address, token_key


def _bind_host(address: str) -> str:
    """The host of ``"host"``, ``"host:port"``, ``"[v6]:port"`` or a bare IPv6 address."""
    if address.startswith("["):
        return address[1 : address.find("]")] if "]" in address else address
    return address.rpartition(":")[0] if address.count(":") == 1 else address


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: it may resolve anywhere
        return False


def _has_token(value: object) -> bool:
    if isinstance(value, list | tuple):
        return any(isinstance(token, str) and token for token in value)
    return bool(value)


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


def parse_toml(text: str, environ: Mapping[str, str], source: str = "config") -> dict[str, Any]:
    """Parse ``text`` as TOML, with ``${VAR}`` and ``${VAR:-default}`` filled in as values.

    A variable never adds TOML syntax (contract §11.7): inside a quoted string its text
    arrives exactly as in the environment; a bare one must read as one integer, float or
    boolean; none can name a key or a table. Not in ``#`` comments. The default applies
    when VAR is unset or empty and is taken as written; ``$${`` writes ``${``. Every
    problem (an unset VAR without a default, invalid TOML, ...) is a :class:`ConfigError`.
    """
    template = _Template(text, environ, source)
    try:
        document = tomllib.loads(template.text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    filled: dict[str, Any] = template.fill(document)
    return filled


_VARIABLE = r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}\n]*))?\}"
_SCANNERS = {  # by the quote that opened the string we are in ("": none)
    "": re.compile(r"#[^\n]*|\"\"\"|'''|\"|'|\$\$\{|" + _VARIABLE),
    '"': re.compile(r'\\.|"|\n|\$\$\{|' + _VARIABLE, re.S),
    '"""': re.compile(r'\\.|"{3,5}|\$\$\{|' + _VARIABLE, re.S),
    "'": re.compile(r"'|\n|\$\$\{|" + _VARIABLE),
    "'''": re.compile(r"'{3,5}|\$\$\{|" + _VARIABLE),
}
_GLUED = re.compile(r"[0-9A-Za-z_.+\-:\"'$]")
"""A character next to a bare variable that would make it part of a longer token."""
_SCALAR = re.compile(r"[+-]?[0-9A-Za-z_.+\-]+")


@dataclass
class _Variable:
    name: str
    value: str
    bare: bool
    line: int


class _Template:
    """The config text with each variable replaced by a unique placeholder that is valid
    TOML where it stands (a bare one by a quoted string, so it can only be a value);
    :meth:`fill` puts the values into the parsed tree."""

    def __init__(self, text: str, environ: Mapping[str, str], source: str) -> None:
        self.raw, self.environ, self.source = text, environ, source
        self.variables: list[_Variable] = []
        nonce = secrets.token_hex(8)
        while nonce in text:  # pragma: no cover - one chance in 2**64
            nonce = secrets.token_hex(8)
        self.prefix = f"_env{nonce}_"
        self.placeholder = re.compile(re.escape(self.prefix) + r"(\d+)_")
        self.text = self._scan()

    def _scan(self) -> str:
        text, out, copied, position, quote = self.raw, [], 0, 0, ""
        while (found := _SCANNERS[quote].search(text, position)) is not None:
            token, position = found.group(), found.end()
            if token == "$${":
                out += [text[copied : found.start()], "${"]
                copied = position
            elif found.group(1) is not None:
                out += [text[copied : found.start()], self._placeholder(found, bare=not quote)]
                copied = position
            elif quote:
                if token[0] != "\\":  # the closing quote, or a newline ending a one-line string
                    quote = ""
            elif token[0] in "\"'":
                quote = token
        out.append(text[copied:])
        return "".join(out)

    def _placeholder(self, found: re.Match[str], bare: bool) -> str:
        name, default = found.group(1), found.group(2)
        line = self.raw.count("\n", 0, found.start()) + 1
        value = self.environ.get(name)
        if not value and default is not None:
            value = default
        if value is None:
            raise ConfigError(
                f"{self.source}: line {line}: environment variable {name} is not set "
                f"(set it, or write ${{{name}:-default}})"
            )
        start, end = found.span()
        if bare and (
            _GLUED.fullmatch(self.raw[start - 1 : start])
            or _GLUED.fullmatch(self.raw[end : end + 1])
        ):
            raise ConfigError(
                f"{self.source}: line {line}: {found.group()} must be a whole value "
                f'(write "...{found.group()}..." to put it in a string)'
            )
        self.variables.append(_Variable(name, value, bare, line))
        mark = f"{self.prefix}{len(self.variables) - 1}_"
        return f'"{mark}"' if bare else mark

    def fill(self, value: Any, path: tuple[str | int, ...] = ()) -> Any:
        """``value`` (the parsed document) with every placeholder replaced by its value."""
        if isinstance(value, dict):
            filled = {}
            for key, item in value.items():
                if found := self.placeholder.search(key):
                    variable = self.variables[int(found.group(1))]
                    raise ConfigError(
                        f"{self.source}: line {variable.line}: ${{{variable.name}}} in a key or "
                        "table name: the environment fills in values, never keys"
                    )
                filled[key] = self.fill(item, (*path, key))
            return filled
        if isinstance(value, list):
            return [self.fill(item, (*path, index)) for index, item in enumerate(value)]
        if isinstance(value, str) and self.prefix in value:
            found = self.placeholder.fullmatch(value)
            if found is not None and (variable := self.variables[int(found.group(1))]).bare:
                return self._scalar(variable, path)
            return self.placeholder.sub(lambda m: self.variables[int(m.group(1))].value, value)
        return value

    def _scalar(self, variable: _Variable, path: tuple[str | int, ...]) -> bool | int | float:
        """A bare variable's value: one TOML integer, float or boolean, or a ConfigError."""
        text = variable.value.strip()
        if _SCALAR.fullmatch(text):
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                value = None
            if isinstance(value, bool | int | float):
                return value
        name = variable.name
        raise ConfigError(
            f"{self.source}: line {variable.line}: {_where(path)}: ${{{name}}} must be one "
            f'integer, float or boolean here (write "${{{name}}}" for a string)'
        )


def _where(path: tuple[str | int, ...]) -> str:
    """``[sources.http] port`` for the path of a value in the document."""
    size = 2 if path and path[0] in KINDS else 1
    table, rest = path[:size], path[size:]
    if not rest:
        return ".".join(map(str, table))
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in rest)
    return f"[{'.'.join(map(str, table))}] {key.removeprefix('.')}"


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
    document = parse_toml(raw, os.environ if environ is None else environ, label)
    unknown = [key for key in document if key not in ("observer", *KINDS)]
    if unknown:
        raise ConfigError(
            f"{label}: [{unknown[0]}]: unknown table (known: observer, {', '.join(KINDS)})"
        )
    settings = _convert(document.get("observer", {}), ObserverSettings, f"{label}: [observer]")
    config = ObserverConfig(
        path=path.resolve(),
        settings=settings,
        row_formats=dict(registry.row_formats),
        finding_kinds=frozenset(registry.finding_kinds),
    )
    for kind in KINDS:
        tables = document.get(kind, {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{label}: {kind}: expected tables like [{kind}.NAME]")
        for name, table in tables.items():
            config.instances.append(_instance(label, kind, name, table, registry))
    if settings.require_token:
        _require_tokens(label, config.instances)
    return config


def _require_tokens(label: str, instances: list[InstanceConfig]) -> None:
    """``require_token = true``: an exposed listener (see :func:`exposed_listener`) is an error."""
    for item in instances:
        if exposed := exposed_listener(item):
            address_key, address, token_key = exposed
            raise ConfigError(
                f"{label}: [{item.qualified}] {address_key}: listens on {address} without a "
                f"{token_key}, and [observer] require_token = true (set {token_key}, or "
                "bind a loopback address)"
            )


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
        missing = plugin.cls.missing_requirement() if enabled else None
        if missing:
            raise ConfigError(f"{where} {missing}")
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
