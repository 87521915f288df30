"""Finding plugins and collecting what they register.

Plugins, the built-ins included, are found through the ``observer_core``
entry-point group. Each entry point is loaded on its own: one that fails to
import, or registers something invalid, is reported (by distribution and
entry-point name) and the others still load.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NamedTuple

import msgspec
import msgspec.inspect as mi
import pluggy

from . import hookspecs
from .components import (
    Analyzer,
    AnalyzerConfig,
    Component,
    ComponentConfig,
    Sink,
    SinkConfig,
    Source,
)
from .records import BUILTIN_FINDING_KINDS

__all__ = [
    "ConfigKey",
    "Origin",
    "PluginError",
    "PluginInfo",
    "Registry",
    "get_plugin_manager",
    "load_registry",
    "local_origin",
    "type_text",
]

ENTRY_POINT_GROUP = "observer_core"
KINDS = ("sources", "sinks", "analyzers")
_KIND_BASE: dict[str, type[Component]] = {
    "sources": Source,
    "sinks": Sink,
    "analyzers": Analyzer,
}
_KIND_CONFIG: dict[str, type[ComponentConfig]] = {
    "sources": ComponentConfig,
    "sinks": SinkConfig,
    "analyzers": AnalyzerConfig,
}
_KIND_HOOK = {
    "sources": "observer_register_sources",
    "sinks": "observer_register_sinks",
    "analyzers": "observer_register_analyzers",
}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a plugin came from: its distribution and entry point."""

    distribution: str
    version: str
    entry_point: str

    def __str__(self) -> str:
        if not self.version:  # registered in-process (tests), not installed
            return f"{self.distribution} {self.entry_point}".rstrip()
        return f"{self.distribution} {self.version} (entry point {self.entry_point!r})"


LOCAL = Origin("(not installed)", "", "")


def local_origin(plugin: object) -> Origin:
    """The origin of a plugin registered in-process (``extra_plugins``), named after it."""
    name = getattr(plugin, "__name__", None) or type(plugin).__qualname__
    return Origin(LOCAL.distribution, "", name)


class ConfigKey(NamedTuple):
    """One key of a plugin's ``Config``, as ``observer-core plugins`` shows it."""

    key: str
    type: str
    """Readable type: ``int >= 1``, ``"a" | "b"``, ``list[str]``."""
    default: str
    """The default as TOML writes it, ``(required)`` or ``(unset)``."""
    doc: str
    """The first line of the field's docstring (the string right below it), or ``""``."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered component class and where it came from."""

    kind: str
    name: str
    cls: type[Component]
    origin: Origin

    @property
    def summary(self) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def config_keys(self) -> list[ConfigKey]:
        """Every key of its ``Config`` with its type, default and docstring."""
        docs = _field_docs(self.cls.Config)
        rows = []
        for info in msgspec.structs.fields(self.cls.Config):
            default = "(required)" if info.required else _toml_value(_default_of(info))
            rows.append(
                ConfigKey(info.encode_name, type_text(info.type), default, docs.get(info.name, ""))
            )
        return rows


@dataclass(frozen=True, slots=True)
class PluginError:
    """A plugin that could not be loaded or registered something invalid."""

    origin: Origin
    message: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.message}"


@dataclass
class Registry:
    """Everything the installed plugins registered."""

    components: dict[str, dict[str, PluginInfo]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    finding_kinds: set[str] = field(default_factory=lambda: set(BUILTIN_FINDING_KINDS))
    row_formats: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    errors: list[PluginError] = field(default_factory=list)
    broken_names: dict[str, PluginError] = field(default_factory=dict)
    """Names that cannot be used, with why: entry points that failed to import, and
    plugin names whose registration was invalid (or made by two plugins), so that a
    config naming one says why rather than "unknown plugin"."""

    def get(self, kind: str, name: str) -> PluginInfo | None:
        return self.components[kind].get(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    @property
    def record_kinds(self) -> set[str]:
        """Kinds a sink may accept: ``op`` and every finding kind."""
        return {"op", *self.finding_kinds}


def get_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager that knows observer-core's hookspecs."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


_BOUNDS = (
    ("ge", ">="),
    ("gt", ">"),
    ("le", "<="),
    ("lt", "<"),
    ("min_length", "length >="),
    ("max_length", "length <="),
)
_SIMPLE_TYPES: dict[type[mi.Type], str] = {
    mi.IntType: "int",
    mi.FloatType: "float",
    mi.StrType: "str",
    mi.BoolType: "bool",
    mi.AnyType: "any",
    mi.NoneType: "none",
}
_MAX_DEFAULT_CHARS = 40


def type_text(annotation: Any) -> str:
    """A config type as a user reads it: ``int >= 1``, ``number > 0``, ``"a" | "b"``.

    ``None`` in a union is left out: a key whose default is unset is shown as such.
    """
    return _describe_type(mi.type_info(annotation))


def _describe_type(info: mi.Type) -> str:
    if isinstance(info, mi.UnionType):
        members = [item for item in info.types if not isinstance(item, mi.NoneType)]
        kinds = {type(item) for item in members}
        if kinds == {mi.IntType, mi.FloatType} and len({_bounds(m) for m in members}) == 1:
            return _with_bounds("number", members[0])
        return " | ".join(dict.fromkeys(_describe_type(item) for item in members))
    if isinstance(info, mi.LiteralType):
        return " | ".join(_toml_value(value) for value in info.values)
    if isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return _with_bounds(f"list[{_describe_type(info.item_type)}]", info)
    if isinstance(info, mi.DictType):
        return f"table of {_describe_type(info.value_type)}"
    if isinstance(info, mi.StructType | mi.TypedDictType | mi.DataclassType):
        return "table"
    name = _SIMPLE_TYPES.get(type(info)) or type(info).__name__.removesuffix("Type").lower()
    return _with_bounds(name, info)


def _default_of(info: msgspec.structs.FieldInfo) -> Any:
    return info.default_factory() if info.default is msgspec.NODEFAULT else info.default


def _bounds(info: mi.Type) -> str:
    return ", ".join(
        f"{text} {getattr(info, attr)}"
        for attr, text in _BOUNDS
        if getattr(info, attr, None) is not None
    )


def _with_bounds(name: str, info: mi.Type) -> str:
    bounds = _bounds(info)
    return f"{name} {bounds}" if bounds else name


def _toml_value(value: Any) -> str:
    """``value`` as TOML writes it (long strings cut short), or ``(unset)`` for None."""
    if value is None:
        return "(unset)"
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        if len(text) <= _MAX_DEFAULT_CHARS:
            return text
        return f'{text[: _MAX_DEFAULT_CHARS - 2]}…" ({len(value)} characters)'
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items())
        return "{ " + items + " }"
    return repr(value)


def _field_docs(config: type) -> dict[str, str]:
    """Field docstrings (a string right below the field) of ``config`` and its bases."""
    docs: dict[str, str] = {}
    for cls in reversed(config.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            continue
        if not tree.body or not isinstance(tree.body[0], ast.ClassDef):
            continue
        body = tree.body[0].body
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value).splitlines()[0]
    return docs


def _origin_of(entry_point: EntryPoint) -> Origin:
    dist = entry_point.dist
    if dist is None:
        return Origin("(unknown)", "", entry_point.name)
    return Origin(dist.metadata["Name"] or dist.name, dist.version, entry_point.name)


def load_registry(extra_plugins: Iterable[tuple[object, Origin | None]] = ()) -> Registry:
    """Load every installed plugin (plus ``extra_plugins``, for tests) into a registry."""
    manager = get_plugin_manager()
    registry = Registry()
    origins: dict[int, Origin] = {}

    def add(plugin: object, origin: Origin, name: str | None = None) -> None:
        try:
            manager.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            registry.errors.append(PluginError(origin, f"invalid plugin: {exc}"))
            return
        unknown = [
            caller.name for caller in manager.get_hookcallers(plugin) or [] if not caller.has_spec()
        ]
        if unknown:
            manager.unregister(plugin)
            registry.errors.append(
                PluginError(origin, f"implements unknown hook(s): {', '.join(unknown)}")
            )
            return
        origins[id(plugin)] = origin

    for entry_point in sorted(
        entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (ep.dist.name if ep.dist else "", ep.name),
    ):
        origin = _origin_of(entry_point)
        try:
            plugin = entry_point.load()
        except Exception as exc:  # a broken third-party plugin must not break the others
            error = PluginError(
                origin, f"failed to import {entry_point.value}: {type(exc).__name__}: {exc}"
            )
            registry.errors.append(error)
            registry.broken_names[entry_point.name] = error
            continue
        if manager.is_registered(plugin):
            continue
        add(plugin, origin, name=f"{origin.distribution}:{entry_point.name}")
    for extra, extra_origin in extra_plugins:
        if not manager.is_registered(extra):  # e.g. a plugin under test that is also installed
            add(extra, extra_origin or local_origin(extra))

    for kind in KINDS:
        _collect_components(manager, registry, kind, origins)
    _collect(manager, "observer_register_finding_kinds", origins, registry, _finding_kind_adder)
    _collect(manager, "observer_register_row_formats", origins, registry, _row_format_adder)
    return registry


Adder = Callable[[Registry, Origin], Callable[..., None]]


def _collect(
    manager: pluggy.PluginManager,
    hook_name: str,
    origins: dict[int, Origin],
    registry: Registry,
    make_register: Adder,
) -> None:
    """Call each implementation of ``hook_name`` on its own, so one failure stays its own.

    Each ``register(...)`` call is checked on its own too: an invalid one is
    reported and the implementation's other registrations still count.
    """
    for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()):
        origin = origins.get(id(impl.plugin), LOCAL)
        try:
            impl.function(register=_checked(make_register(registry, origin), registry, origin))
        except Exception as exc:
            registry.errors.append(
                PluginError(origin, f"{hook_name} failed: {type(exc).__name__}: {exc}")
            )


def _collect_components(
    manager: pluggy.PluginManager, registry: Registry, kind: str, origins: dict[int, Origin]
) -> None:
    claimed: dict[str, list[Origin]] = {}
    """Every origin that registered each name, to report a name registered twice."""

    def make_register(registry: Registry, origin: Origin) -> Callable[..., None]:
        def register(cls: Any) -> None:
            problem = _component_problem(cls, kind)
            name = getattr(cls, "name", None)
            name = name if isinstance(name, str) and name else None
            if problem:
                raise _InvalidRegistration(problem, name)
            assert name is not None
            existing = registry.components[kind].get(name)
            if existing is not None and existing.cls is cls:
                return  # the same class again (e.g. re-exported by another module)
            owners = claimed.setdefault(name, [])
            owners.append(origin)
            if len(owners) > 1:
                registry.components[kind].pop(name, None)
                others = ", ".join(str(other) for other in owners[:-1])
                raise _InvalidRegistration(
                    f"{kind[:-1]} {name!r} is also registered by {others}; "
                    "none of them is used until all but one are uninstalled",
                    name,
                )
            registry.components[kind][name] = PluginInfo(kind, name, cls, origin)

        return register

    _collect(manager, _KIND_HOOK[kind], origins, registry, make_register)


def _checked(
    register: Callable[..., None], registry: Registry, origin: Origin
) -> Callable[..., None]:
    """``register``, reporting an invalid registration instead of raising it into the plugin."""

    def checked(*args: Any) -> None:
        try:
            register(*args)
        except _InvalidRegistration as exc:
            error = PluginError(origin, f"invalid registration: {exc}")
            registry.errors.append(error)
            if exc.name:
                registry.broken_names.setdefault(exc.name, error)

    return checked


class _InvalidRegistration(Exception):
    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        """The plugin name it was registered under, when it has one (for config errors)."""


_REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "sources": ("run", "poll"),
    "sinks": ("write",),
    "analyzers": ("analyze",),
}


def _component_problem(cls: Any, kind: str) -> str | None:
    """Why ``cls`` cannot be registered as one of ``kind``, or None."""
    base = _KIND_BASE[kind]
    label = getattr(cls, "__qualname__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, base)):
        hint = next(
            (
                f" (it is a {other.__name__}: register it with {_KIND_HOOK[other_kind]})"
                for other_kind, other in _KIND_BASE.items()
                if isinstance(cls, type) and issubclass(cls, other)
            ),
            "",
        )
        return f"{label} was registered as a {kind[:-1]} but is not a {base.__name__}{hint}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        return f"{label} has no `name` (a non-empty string)"
    config_base = _KIND_CONFIG[kind]
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, config_base)):
        return f"{label} ({name!r}) has no `Config` subclassing {config_base.__name__}"
    methods = _REQUIRED_METHODS[kind]
    if all(getattr(cls, method) is getattr(base, method) for method in methods):
        return f"{label} ({name!r}) does not implement {' or '.join(methods)}()"
    return None


def _finding_kind_adder(registry: Registry, origin: Origin) -> Callable[..., None]:
    def register(kind: str) -> None:
        if not isinstance(kind, str) or not kind:
            raise _InvalidRegistration(f"finding kind must be a non-empty string, got {kind!r}")
        registry.finding_kinds.add(kind)

    return register


def _row_format_adder(registry: Registry, origin: Origin) -> Callable[..., None]:
    def register(name: str, mapper: Callable[[Any], Any]) -> None:
        if name in registry.row_formats:
            raise _InvalidRegistration(f"row format {name!r} is already registered")
        registry.row_formats[name] = mapper

    return register
