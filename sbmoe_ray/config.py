"""Config files: YAML with the line of every key, overrides, and dataclass building with typed errors.

Every :class:`~sbmoe_ray.errors.ConfigError` raised while building or validating a config names the key
as ``<where>.<key>=<value>``; :func:`load_config` turns that into ``file:line: ...`` for keys that came
from the file. PyYAML reads ``1e-4`` as a string (YAML 1.1); numeric strings for float settings are
accepted as numbers.

A config is a tree of dataclasses (sections). A single-field limit is declared next to its field
(``setting(default, check)``, :mod:`sbmoe_ray.limits`); a class's ``rules()`` holds only cross-field rules.
A key given at the wrong level (an old flat key, e.g. ``encoder_lr`` now ``optim.encoder_lr``) is refused
with its new place. Nothing here imports torch or Ray, so a bad config answers in well under a second.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sbmoe_ray.errors import ConfigError

T = TypeVar("T")


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping in ``path`` and the 1-based line of every (dotted) key."""
    try:
        loader = yaml.SafeLoader(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    finally:
        loader.dispose()
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: the config must be a mapping of keys to values")
    lines: dict[str, int] = {}

    def build(node: yaml.Node, prefix: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            out, seen = {}, {}
            for key_node, value_node in node.value:
                dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                line = key_node.start_mark.line + 1
                if key_node.value in seen:        # YAML would keep the last one without a word
                    raise ConfigError(f"{path}:{line}: config.{dotted}: given twice, on lines {seen[key_node.value]} "
                                      f"and {line}; keep one")
                seen[key_node.value] = lines[dotted] = line
                out[key_node.value] = build(value_node, dotted)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, prefix) for item in node.value]
        return yaml.SafeLoader("").construct_object(node)

    return build(root, ""), lines


def apply_overrides(values: dict[str, Any], overrides: list[str],
                    lines: dict[str, int] | None = None) -> dict[str, Any]:
    """``key=value`` or ``section.key=value`` (value parsed as YAML) applied on a copy of ``values``.

    Overridden keys are removed from ``lines``, so that errors about them are not blamed on the file.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.num_experts=6")
        *parents, leaf = key.split(".")
        target = out
        for depth, parent in enumerate(parents):
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                section = ".".join(parents[:depth + 1])
                raise ConfigError(f"--set {item!r}: config.{section}={target!r} is a value, not a section with "
                                  f"keys; set it as --set {section}=VALUE")
        target[leaf] = yaml.safe_load(text)
        if lines is not None:
            lines.pop(key, None)
    return out


def _check_type(value: Any, hint: Any, key: str, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _check_type(value, option, key, where)
            except ConfigError:
                pass
        names = [" or ".join(map(repr, typing.get_args(o))) if typing.get_origin(o) is typing.Literal
                 else getattr(o, "__name__", str(o)) for o in options]
        raise ConfigError(f"{where}.{key}={value!r}: expected {' or '.join(names)}"
                          + (" or null" if type(None) in args else ""))
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}.{key}={value!r}: allowed values are {list(args)}")
    if origin is list:
        if not isinstance(value, list):
            value = [value] if isinstance(value, (str, int, float)) else value
        if not isinstance(value, list):
            raise ConfigError(f"{where}.{key}={value!r}: expected a list")
        return [_check_type(v, args[0], key, where) for v in value] if args else value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    else:   # Any, or a type this checker does not know: the dataclass's own validation decides
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}.{key}={value!r}: expected {expected}, got {type(value).__name__}")


def check_fields(config: Any, where: str) -> None:
    """Run the single-field checks of ``config`` and of every nested section."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, ConfigBase):
            value.validate(f"{where}.{f.name}")
            continue
        problem = f.metadata.get("check") and f.metadata["check"](value)
        if problem:
            raise ConfigError(f"{where}.{f.name}={value!r}: {problem}")


def _moved(cls: type, key: str) -> str | None:
    """Where ``key`` lives now, when it is a field of one of ``cls``'s sections."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) and key in {g.name for g in dataclasses.fields(hints[f.name])}:
            return f"{f.name}.{key}"
    return None


def build_dataclass(cls: type[T], values: dict[str, Any], where: str) -> T:
    """``cls(**values)`` with unknown keys and wrong types reported as ConfigErrors naming the key.

    Fields whose type is itself a dataclass are built recursively from a nested mapping.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where}={values!r}: expected a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            moved = getattr(cls, "MOVED", {}).get(key) or _moved(cls, key)
            if moved and isinstance(value, dict) and value:         # a section renamed: name its first key
                inner = next(iter(value))
                raise ConfigError(f"{where}.{key}.{inner}={value[inner]!r}: this key moved to {where}.{moved}.{inner}; "
                                  f"write it there ({moved}: {{{inner}: ...}})")
            if moved:
                section, _, leaf = moved.rpartition(".")
                there = f"{section}: {{{leaf}: ...}}" if section else f"{leaf}: ..."
                raise ConfigError(f"{where}.{key}={value!r}: this key moved to {where}.{moved}; "
                                  f"write it there ({there})")
            raise ConfigError(f"{where}.{key}={value!r}: unknown key; allowed keys are {sorted(known)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, value or {}, f"{where}.{key}")
        else:
            kwargs[key] = _check_type(value, hint, key, where)
    return cls(**kwargs)


class ConfigBase:
    """A config dataclass built from plain data (YAML, JSON) and validated: ``from_dict`` + ``validate``."""

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
        """Build from plain data; unknown keys, wrong types and bad values are ConfigErrors naming the key."""
        config = build_dataclass(cls, values, where)
        config.validate(where)
        return config

    def validate(self, where: str = "config") -> None:
        """Every field's own limit (nested sections included), then the cross-field :meth:`rules`."""
        check_fields(self, where)
        self.rules(where)

    def rules(self, where: str) -> None:
        """Cross-field rules; one ConfigError naming the keys involved."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(cls: type[T], path: Path, overrides: list[str] = ()) -> T:
    """``cls.from_dict`` of a YAML file plus ``key=value`` overrides; errors name ``file:line`` and the key."""
    values, lines = read_yaml(path)
    try:
        return cls.from_dict(apply_overrides(values, list(overrides), lines))
    except ConfigError as error:
        raise locate(error, path, lines) from None


_KEY = re.compile(r"^config\.([A-Za-z_][\w.]*?)=")


def locate(error: ConfigError, path: Path, lines: dict[str, int]) -> ConfigError:
    """Prefix a ``config.<key>=...`` error with ``file:line`` when the key came from the file."""
    match = _KEY.match(str(error))
    if not match:
        return ConfigError(f"{path}: {error}")
    key = match.group(1)
    line = lines.get(key)
    return ConfigError(f"{path}:{line}: {error}" if line else f"{error} (from --set or a default; config {path})")
