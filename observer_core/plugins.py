"""Finding plugins and collecting what they register.

Plugins, the built-ins included, are found through the ``observer_core``
entry-point group. Each entry point is loaded on its own: one that fails to
import, or registers something invalid, is reported (by distribution and
entry-point name) and the others still load.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import msgspec
import pluggy

from . import hookspecs
from .components import Analyzer, Component, ComponentConfig, Sink, Source
from .records import BUILTIN_FINDING_KINDS

__all__ = ["PluginError", "PluginInfo", "Registry", "get_plugin_manager", "load_registry"]

ENTRY_POINT_GROUP = "observer_core"
KINDS = ("sources", "sinks", "analyzers")
_KIND_BASE: dict[str, type[Component]] = {
    "sources": Source,
    "sinks": Sink,
    "analyzers": Analyzer,
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
        return f"{self.distribution} {self.version} (entry point {self.entry_point!r})"


LOCAL = Origin("(not installed)", "", "")


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

    def config_keys(self) -> list[tuple[str, str, str]]:
        """``(key, type, default)`` for every key of its ``Config``; required keys say so."""
        rows = []
        for info in msgspec.structs.fields(self.cls.Config):
            if info.required:
                default = "(required)"
            else:
                value = info.default_factory() if info.default is msgspec.NODEFAULT else info.default
                default = "(unset)" if value is None else repr(value)
            rows.append((info.encode_name, _type_name(info.type), default))
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
    """Entry-point names that failed to load, so a config using one can say why."""

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


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


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
        entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.dist.name if ep.dist else "", ep.name)
    ):
        origin = _origin_of(entry_point)
        try:
            plugin = entry_point.load()
        except Exception as exc:  # a broken third-party plugin must not break the others
            error = PluginError(origin, f"failed to import {entry_point.value}: {type(exc).__name__}: {exc}")
            registry.errors.append(error)
            registry.broken_names[entry_point.name] = error
            continue
        if manager.is_registered(plugin):
            continue
        add(plugin, origin, name=f"{origin.distribution}:{entry_point.name}")
    for extra, extra_origin in extra_plugins:
        add(extra, extra_origin or LOCAL)

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
    """Call each implementation of ``hook_name`` on its own, so one failure stays its own."""
    for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()):
        origin = origins.get(id(impl.plugin), LOCAL)
        try:
            impl.function(register=make_register(registry, origin))
        except _InvalidRegistration as exc:
            registry.errors.append(PluginError(origin, f"invalid registration: {exc}"))
        except Exception as exc:
            registry.errors.append(
                PluginError(origin, f"{hook_name} failed: {type(exc).__name__}: {exc}")
            )


def _collect_components(
    manager: pluggy.PluginManager, registry: Registry, kind: str, origins: dict[int, Origin]
) -> None:
    def make_register(registry: Registry, origin: Origin) -> Callable[..., None]:
        def register(cls: Any) -> None:
            problem = _component_problem(cls, kind, registry)
            if problem:
                raise _InvalidRegistration(problem)
            registry.components[kind][cls.name] = PluginInfo(kind, cls.name, cls, origin)

        return register

    _collect(manager, _KIND_HOOK[kind], origins, registry, make_register)


class _InvalidRegistration(Exception):
    pass


def _component_problem(cls: Any, kind: str, registry: Registry) -> str | None:
    base = _KIND_BASE[kind]
    label = getattr(cls, "__qualname__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, base)):
        return f"{label} registered as one of {kind} but does not subclass {base.__name__}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        return f"{label} has no `name`"
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, ComponentConfig)):
        return f"{label} ({name!r}) has no `Config` subclassing ComponentConfig"
    if name in registry.components[kind]:
        other = registry.components[kind][name].origin
        return f"{kind[:-1]} {name!r} is already registered by {other}"
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
