"""Typed, validated job configurations: YAML files plus dotted ``key=value`` overrides.

Each job has one :class:`Config` subclass; each YAML section maps one-to-one to a
nested :class:`Config`. Validation happens before anything starts, and any problem
becomes a :class:`~sepcore.errors.ConfigError` that names the dotted key.
"""

from __future__ import annotations

import types
import typing
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sepcore.errors import ConfigError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every configuration: unknown keys are errors, defaults are validated."""

    model_config = ConfigDict(
        extra="forbid", validate_default=True, coerce_numbers_to_str=True, frozen=True
    )


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(text, "an override must look like key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``key`` ``a.b.c``, creating the mappings on the way."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _error_from_validation(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        return ConfigError(key, "unknown key")
    if kind == "missing":
        return ConfigError(key, "missing required value")
    given = err.get("input")
    return ConfigError(key, f"{err['msg']} (got {given!r})")


def load_config(cls: type[C], path: str | None = None, overrides: list[str] | None = None) -> C:
    """Read ``path`` (YAML mapping, optional), apply ``overrides``, validate as ``cls``."""
    tree: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh)
        except FileNotFoundError as exc:
            raise ConfigError("--config", f"no such file: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError("--config", f"{path} is not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("--config", f"{path} must hold a mapping of keys")
        tree = loaded
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        raise _error_from_validation(exc) from None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def describe(cls: type[Config], prefix: str = "") -> list[str]:
    """One line per key: dotted name, type, default (or 'required') and description."""
    lines: list[str] = []
    for name, field in cls.model_fields.items():
        key = prefix + name
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, Config):
            lines.append(f"  {key}.*  ({field.description or ann.__name__})")
            lines.extend(describe(ann, key + "."))
            continue
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        lines.append(f"  {key} ({_type_name(ann)}; {default})")
        if field.description:
            lines.append(f"      {field.description}")
    return lines


def to_plain(cfg: Config) -> dict[str, Any]:
    """The resolved configuration as plain data (for summary.json and config.yaml)."""
    return cfg.model_dump(mode="json")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_keys(found: dict[str, Any], wanted: dict[str, Any], may_differ: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two plain settings trees, sorted.

    ``may_differ`` names keys left out of the comparison: ``"optim.epochs"`` (that key),
    ``"scaling.*"`` (everything below ``scaling``). A key present on one side only counts
    as a difference. This is the one check behind every "this output holds other
    settings" refusal (prepare, train, tune).
    """

    def allowed(key: str) -> bool:
        return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in may_differ)

    a, b = _flatten(found), _flatten(wanted)
    return sorted(k for k in set(a) | set(b) if a.get(k, ...) != b.get(k, ...) and not allowed(k))
