"""Every number a built-in plugin's ``Config`` takes carries its bounds (issue 25).

A ``port = 99999`` under ``[sources.status]`` once passed ``check`` and bound port
34463. So every integer and float field, at any depth, must have a lower bound
(``ge``/``gt``) and an upper one (``le``/``lt``) in its ``msgspec.Meta``, unless the
field says why not, beside it: ``Meta(extra={"unbounded": "the reason"})``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
import msgspec.inspect as mi
import pytest

from observer_core.components import ComponentConfig
from observer_core.plugins import KINDS, load_registry

UNBOUNDED = "unbounded"
"""The ``Meta(extra=...)`` key that exempts a field, its value being the reason."""

REGISTRY = load_registry()
BUILTIN = [
    info
    for kind in KINDS
    for info in REGISTRY.components[kind].values()
    if info.cls.__module__.startswith("observer_plugins.")
]


def unbounded_numbers(config: type[msgspec.Struct]) -> Iterator[str]:
    """``key.path: why`` for each number field of ``config`` that lacks a bound."""
    yield from _walk(mi.type_info(config), "", {})


def _walk(info: mi.Type, path: str, extra: dict[str, Any]) -> Iterator[str]:
    if isinstance(info, mi.Metadata):
        yield from _walk(info.type, path, {**extra, **(info.extra or {})})
    elif isinstance(info, mi.StructType):
        for item in info.fields:
            yield from _walk(item.type, f"{path}.{item.encode_name}".lstrip("."), {})
    elif isinstance(info, mi.UnionType):
        for member in info.types:
            yield from _walk(member, path, extra)
    elif isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        yield from _walk(info.item_type, f"{path}[]", {})
    elif isinstance(info, mi.DictType):
        yield from _walk(info.value_type, f"{path}.*", {})
    elif isinstance(info, mi.IntType | mi.FloatType):
        reason = extra.get(UNBOUNDED)
        if isinstance(reason, str) and reason.strip():
            return
        missing = [
            side
            for side, attrs in (("lower", ("ge", "gt")), ("upper", ("le", "lt")))
            if all(getattr(info, attr) is None for attr in attrs)
        ]
        if missing:
            yield f"{path}: no {' and no '.join(missing)} bound"


def test_the_walk_finds_every_builtin():
    names = {info.name for info in BUILTIN}
    assert {"http", "status", "nats", "jsonl", "diagnosis", "playbook"} <= names


@pytest.mark.parametrize("info", BUILTIN, ids=lambda info: f"{info.kind}.{info.name}")
def test_every_number_in_a_builtin_config_is_bounded(info):
    assert list(unbounded_numbers(info.cls.Config)) == [], (
        f"{info.cls.Config.__qualname__}: give each field Meta(ge=..., le=...), "
        f'or Meta(extra={{"{UNBOUNDED}": "why"}}) beside it'
    )


class _Sample(ComponentConfig, kw_only=True, forbid_unknown_fields=True):
    port: int = 1
    nested: dict[str, float] = msgspec.field(default_factory=dict)
    bounded: Annotated[int, msgspec.Meta(ge=0, le=9)] = 0
    half: Annotated[float, msgspec.Meta(gt=0)] | None = None
    excused: Annotated[int, msgspec.Meta(extra={UNBOUNDED: "a counter, any int64"})] = 0
    no_reason: Annotated[int, msgspec.Meta(extra={UNBOUNDED: " "})] = 0


def test_the_check_catches_what_it_should():
    assert list(unbounded_numbers(_Sample)) == [
        "port: no lower and no upper bound",
        "nested.*: no lower and no upper bound",
        "half: no upper bound",
        "no_reason: no lower and no upper bound",
    ]
