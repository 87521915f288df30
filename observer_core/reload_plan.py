"""What a reload would change (contract §12.1): the difference of two configs.

Instances are matched by ``KIND.NAME``; only enabled ones run, so enabling an
instance adds it and disabling one removes it. An instance is changed when its
plugin or any key of its table differs. Of the ``[observer]`` keys, only
:data:`LIVE_SETTINGS` may change on a running daemon; a change to any other is
refused, naming the key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .config import InstanceConfig, ObserverConfig, ObserverSettings
from .kinds import SOURCES

__all__ = [
    "LIVE_SETTINGS",
    "ConfigSnapshot",
    "Diff",
    "ReloadPlan",
    "diff",
    "plan_reload",
    "snapshot",
]

LIVE_SETTINGS = frozenset({"cycle_secs", "ring_size", "max_field_bytes", "shutdown_timeout_secs"})
"""``[observer]`` keys a reload applies; any other needs a restart. A change of
``max_field_bytes`` restarts every source (they take it when built)."""


class ConfigSnapshot(msgspec.Struct, kw_only=True):
    """What a reload is compared against, without a secret in it: each enabled
    instance's fingerprint (a hash of its plugin and table) by ``KIND.NAME``, and the
    ``[observer]`` values. The daemon keeps the running one in ``reload.json``, so
    ``reload --dry-run`` can compare a file with it."""

    instances: dict[str, str] = msgspec.field(default_factory=dict)
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


def snapshot(config: ObserverConfig) -> ConfigSnapshot:
    """``config`` as a :class:`ConfigSnapshot`, instances in config order."""
    return ConfigSnapshot(
        instances={item.qualified: _fingerprint(item) for item in config.instances if item.enabled},
        settings={key: _setting(config, key) for key in ObserverSettings.__struct_fields__},
    )


@dataclass
class Diff:
    """``KIND.NAME`` of the instances a reload adds, changes, removes and keeps, and the
    ``[observer]`` keys it changes live or is refused for."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    live_settings: list[str] = field(default_factory=list)
    refused_settings: list[str] = field(default_factory=list)

    def refusal(self, config_name: str) -> str | None:
        """Why the daemon refuses it (one line, naming the file and the keys), or None."""
        if not self.refused_settings:
            return None
        keys = ", ".join(self.refused_settings)
        return (
            f"{config_name}: [observer] {keys}: cannot change while the daemon runs "
            "(restart it to apply)"
        )

    def summary(self) -> str:
        """One line: ``added [a], changed [b], removed [], unchanged [c]``, and the live
        ``[observer]`` keys when any changed."""
        outcomes = {
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "unchanged": self.unchanged,
        }
        parts = [f"{key} [{', '.join(names)}]" for key, names in outcomes.items()]
        if self.live_settings:
            parts.append(f"[observer] {', '.join(self.live_settings)}")
        return ", ".join(parts)


def diff(old: ConfigSnapshot, new: ConfigSnapshot) -> Diff:
    """Compare the running snapshot ``old`` with ``new``."""
    result = Diff()
    for name, fingerprint in new.instances.items():
        before = old.instances.get(name)
        if before is None:
            result.added.append(name)
        else:
            (result.unchanged if before == fingerprint else result.changed).append(name)
    result.removed = [name for name in old.instances if name not in new.instances]
    for key, value in new.settings.items():
        if old.settings.get(key) != value:
            live = key in LIVE_SETTINGS
            (result.live_settings if live else result.refused_settings).append(key)
    if "max_field_bytes" in result.live_settings:
        # Sources take the bound when they are built: each starts again with the new one.
        restarted = [name for name in result.unchanged if name.startswith(f"{SOURCES.kind}.")]
        result.unchanged = [name for name in result.unchanged if name not in restarted]
        result.changed += restarted
    return result


@dataclass
class ReloadPlan:
    """How the running config (``old``) becomes ``new``: :class:`Diff` with the instances."""

    old: ObserverConfig
    new: ObserverConfig
    diff: Diff
    added: list[InstanceConfig] = field(default_factory=list)
    """Enabled in ``new`` only (new, or enabled now)."""
    changed: list[tuple[InstanceConfig, InstanceConfig]] = field(default_factory=list)
    """``(old, new)`` of instances enabled in both whose plugin or table differs."""
    removed: list[InstanceConfig] = field(default_factory=list)
    """Enabled in ``old`` only (gone, or disabled now)."""
    unchanged: list[InstanceConfig] = field(default_factory=list)
    """Enabled in both and equal: they keep running untouched (the running ones, ``old``)."""

    @property
    def refusal(self) -> str | None:
        """Why the daemon refuses this plan (one line), or None when it can apply it."""
        return self.diff.refusal(self.new.path.name)


def plan_reload(old: ObserverConfig, new: ObserverConfig) -> ReloadPlan:
    """Compare the running config ``old`` with ``new`` (both loaded and validated)."""
    found = diff(snapshot(old), snapshot(new))
    running = {item.qualified: item for item in old.instances if item.enabled}
    wanted = {item.qualified: item for item in new.instances if item.enabled}
    return ReloadPlan(
        old=old,
        new=new,
        diff=found,
        added=[wanted[name] for name in found.added],
        changed=[(running[name], wanted[name]) for name in found.changed],
        removed=[running[name] for name in found.removed],
        unchanged=[running[name] for name in found.unchanged],
    )


def _fingerprint(item: InstanceConfig) -> str:
    """What makes two instances the same, as a hash (the table may hold secrets): the
    plugin and every key of the table."""
    table = msgspec.json.encode([item.plugin.name, msgspec.to_builtins(item.config)])
    return hashlib.sha256(table).hexdigest()


def _setting(config: ObserverConfig, key: str) -> Any:
    """One ``[observer]`` value; ``state_dir`` as the folder it resolves to (relative
    paths are relative to the config file)."""
    return str(config.state_dir) if key == "state_dir" else getattr(config.settings, key)
