"""How the CLI shows plugins and configs (``plugins NAME``, ``check --resolved``).

Presentation only: discovery (:mod:`observer_core.plugins`) knows nothing of it.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import textwrap
import tomllib
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import msgspec.inspect as mi
import tomli_w

from .kinds import spec_of
from .plugins import PluginInfo

if TYPE_CHECKING:
    from .config import ObserverConfig

__all__ = ["ConfigKey", "config_keys", "plugin_lines", "resolved_toml", "summary", "type_text"]

UNSET_MARK = "(unset)"
"""How a key with no value is shown, as a default and in ``check --resolved``."""


class ConfigKey(NamedTuple):
    """One key of a plugin's ``Config``, as ``observer-core plugins`` shows it."""

    key: str
    type: str
    """Readable type: ``int >= 1``, ``"a" | "b"``, ``list[str]``."""
    default: str
    """The default as TOML writes it, ``(required)`` or ``(unset)``."""
    doc: str
    """The first line of the field's docstring (the string right below it), or ``""``."""


def summary(info: PluginInfo) -> str:
    """The first line of the plugin class's docstring."""
    doc = (inspect.getdoc(info.cls) or "").strip()
    return doc.splitlines()[0] if doc else ""


def config_keys(info: PluginInfo) -> list[ConfigKey]:
    """Every key of the plugin's ``Config`` with its type, default and docstring."""
    docs = _field_docs(info.cls.Config)
    rows = []
    for field in msgspec.structs.fields(info.cls.Config):
        default = "(required)" if field.required else _toml_value(_default_of(field))
        rows.append(
            ConfigKey(field.encode_name, type_text(field.type), default, docs.get(field.name, ""))
        )
    return rows


def plugin_lines(info: PluginInfo, verbose: bool, detail: bool = False) -> list[str]:
    """One plugin: name and distribution; ``verbose`` adds version, summary and config keys;
    ``detail`` adds its kind, entry point and each key's docstring."""
    lines = [f"  {info.name:<16} {info.origin.distribution}"]
    if not verbose:
        return lines
    lines[0] += f" {info.origin.version}".rstrip()
    indent = " " * 6
    if summary(info):
        lines.append(indent + summary(info))
    if detail and info.origin.entry_point:
        kind = spec_of(info.kind).with_article
        lines.append(f"{indent}{kind}, entry point {info.origin.entry_point!r}")
    keys = config_keys(info)
    if not keys:
        return lines
    key_width = max(len(key.key) for key in keys)
    type_width = max(len(key.type) for key in keys)
    for key in keys:
        lines.append(f"{indent}{key.key:<{key_width}}  {key.type:<{type_width}}  {key.default}")
        if detail and key.doc:
            lines.append(f"{indent}    {key.doc}")
    return lines


def resolved_toml(config: ObserverConfig) -> str:
    """The whole config with every default filled in, as TOML, listing every key.

    :meth:`ObserverConfig.to_toml` leaves out keys with no value (TOML has no null)
    and masks secrets; here each table also gets its unset keys as comments,
    ``# token = (unset)`` (``# fleet.url = (unset)`` for a nested one).
    """
    document = tomllib.loads(config.to_toml())
    parts = [tomli_w.dumps({"observer": document.pop("observer", {})})]
    for item in config.instances:
        table = document.get(item.kind, {}).get(item.name, {})
        text = tomli_w.dumps({item.kind: {item.name: table}})
        unset = [f"# {key} = {UNSET_MARK}\n" for key in _unset_keys(item.config)]
        head, blank, rest = text.partition("\n\n")  # its own keys, then its subtables
        parts.append(head.rstrip("\n") + "\n" + "".join(unset) + ("\n" + rest if blank else ""))
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def _unset_keys(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is None, at any depth of a struct."""
    keys: list[str] = []
    for field in msgspec.structs.fields(value) if isinstance(value, msgspec.Struct) else ():
        item = getattr(value, field.name)
        if item is None:
            keys.append(prefix + field.encode_name)
        elif isinstance(item, msgspec.Struct):
            keys += _unset_keys(item, f"{prefix}{field.encode_name}.")
    return keys


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
    if isinstance(info, mi.Metadata):  # a Meta with a description or extra
        return _describe_type(info.type)
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
        return UNSET_MARK
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
