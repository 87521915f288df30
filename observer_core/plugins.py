"""Finding plugins and collecting what they register (discovery; the CLI's
presentation of it is :mod:`observer_core.describe`).

Plugins, the built-ins included, are found through the ``observer_core``
entry-point group. Each entry point is loaded on its own: one that fails to
import, or registers something invalid, is reported (by distribution and
entry-point name) and the others still load. Each hook implementation gets a
typed registrar (:class:`ComponentRegistrar` for the kinds of
:data:`~observer_core.kinds.KIND_SPECS`) that checks every call on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

import pluggy

from . import hookspecs
from .components import Component
from .hookspecs import RowFormat
from .kinds import KIND_SPECS, KINDS, KindSpec

__all__ = [
    "KINDS",
    "LOCAL",
    "ComponentRegistrar",
    "Origin",
    "PluginError",
    "PluginInfo",
    "Registry",
    "get_plugin_manager",
    "load_registry",
    "local_origin",
]

ENTRY_POINT_GROUP = "observer_core"
C = TypeVar("C", bound=Component)


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


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered component class and where it came from."""

    kind: str
    name: str
    cls: type[Component]
    origin: Origin


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
    finding_kinds: set[str] = field(default_factory=set)
    """Every kind registered through ``observer_register_finding_kinds`` (the built-in
    analyzers register theirs too)."""
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

    for spec in KIND_SPECS:
        claimed: dict[str, list[Origin]] = {}
        _collect(manager, spec.hook, origins, registry, _component_registrar(spec, claimed))
    _collect(
        manager,
        hookspecs.observer_register_finding_kinds.__name__,
        origins,
        registry,
        FindingKindRegistrar,
    )
    _collect(
        manager,
        hookspecs.observer_register_row_formats.__name__,
        origins,
        registry,
        RowFormatRegistrar,
    )
    return registry


class _InvalidRegistration(Exception):
    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        """The plugin name it was registered under, when it has one (for config errors)."""


class _Registrar:
    """What a hook implementation calls ``register``: checks each call on its own, and
    reports an invalid one (by the plugin's origin) instead of raising it into the plugin,
    so the implementation's other registrations still count."""

    def __init__(self, registry: Registry, origin: Origin) -> None:
        self.registry = registry
        self.origin = origin

    def _reject(self, exc: _InvalidRegistration) -> None:
        error = PluginError(self.origin, f"invalid registration: {exc}")
        self.registry.errors.append(error)
        if exc.name:
            self.registry.broken_names.setdefault(exc.name, error)


class ComponentRegistrar(_Registrar, Generic[C]):
    """The ``register`` of a component kind's hook: ``register(cls)`` (a
    :data:`~observer_core.RegisterSource`, ``RegisterSink`` or ``RegisterAnalyzer``)."""

    def __init__(
        self,
        registry: Registry,
        origin: Origin,
        spec: KindSpec[C],
        claimed: dict[str, list[Origin]],
    ) -> None:
        super().__init__(registry, origin)
        self.spec = spec
        self.claimed = claimed
        """Every origin that registered each name of this kind, to report a name taken twice."""

    def __call__(self, cls: type[C]) -> None:
        try:
            self._add(cls)
        except _InvalidRegistration as exc:
            self._reject(exc)

    def _add(self, cls: type[C]) -> None:
        spec, table = self.spec, self.registry.components[self.spec.kind]
        name = getattr(cls, "name", None)
        name = name if isinstance(name, str) and name else None
        problem = spec.problem(cls)
        if problem or name is None:
            raise _InvalidRegistration(problem or "no name", name)
        existing = table.get(name)
        if existing is not None and existing.cls is cls:
            return  # the same class again (e.g. re-exported by another module)
        owners = self.claimed.setdefault(name, [])
        owners.append(self.origin)
        if len(owners) > 1:
            table.pop(name, None)
            others = ", ".join(str(other) for other in owners[:-1])
            raise _InvalidRegistration(
                f"{spec.singular} {name!r} is also registered by {others}; "
                "none of them is used until all but one are uninstalled",
                name,
            )
        table[name] = PluginInfo(spec.kind, name, cls, self.origin)


def _component_registrar(
    spec: KindSpec[C], claimed: dict[str, list[Origin]]
) -> Callable[[Registry, Origin], ComponentRegistrar[C]]:
    """A factory of ``spec``'s registrars that share one record of claimed names."""
    return lambda registry, origin: ComponentRegistrar(registry, origin, spec, claimed)


class FindingKindRegistrar(_Registrar):
    """The ``register`` of ``observer_register_finding_kinds``: ``register(kind)``."""

    def __call__(self, kind: str) -> None:
        if not isinstance(kind, str) or not kind:
            error = f"finding kind must be a non-empty string, got {kind!r}"
            self._reject(_InvalidRegistration(error))
            return
        self.registry.finding_kinds.add(kind)


class RowFormatRegistrar(_Registrar):
    """The ``register`` of ``observer_register_row_formats``: ``register(name, mapper)``."""

    def __call__(self, name: str, mapper: RowFormat) -> None:
        if name in self.registry.row_formats:
            self._reject(_InvalidRegistration(f"row format {name!r} is already registered"))
            return
        self.registry.row_formats[name] = mapper


def _collect(
    manager: pluggy.PluginManager,
    hook_name: str,
    origins: dict[int, Origin],
    registry: Registry,
    registrar: Callable[[Registry, Origin], Callable[..., None]],
) -> None:
    """Call each implementation of ``hook_name`` on its own, with its own registrar, so
    that one failure stays its own."""
    for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()):
        origin = origins.get(id(impl.plugin), LOCAL)
        try:
            impl.function(register=registrar(registry, origin))
        except Exception as exc:
            registry.errors.append(
                PluginError(origin, f"{hook_name} failed: {type(exc).__name__}: {exc}")
            )
