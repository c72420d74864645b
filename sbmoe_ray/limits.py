"""Single-field limits of config settings, declared next to their field: ``x: int = setting(1, positive_int)``.

A check takes the value and returns the rule it broke (or None); :meth:`sbmoe_ray.config.ConfigBase.validate`
runs every field's check, then the class's cross-field ``rules``, and reports the first broken one as
``<where>.<key>=<value>: <rule>``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def setting(default: Any = dataclasses.MISSING, check=None, factory=dataclasses.MISSING):
    """A dataclass field whose single-field limit ``check(value) -> str | None`` (the rule it broke) is
    kept with it; :meth:`ConfigBase.validate` runs every check, then the class's cross-field ``rules``."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"check": check})


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else "must be a positive integer"


def non_negative_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "must be an integer >= 0"


def non_negative(value: Any) -> str | None:
    return None if _number(value) and value >= 0 else "must be a number >= 0"


def positive(value: Any) -> str | None:
    return None if _number(value) and value > 0 else "must be a number > 0"


def unit_interval(value: Any) -> str | None:
    """[0, 1): fractions and probabilities."""
    return None if _number(value) and 0 <= value < 1 else "allowed range is [0, 1)"


def one_of(*allowed: Any):
    def check(value: Any) -> str | None:
        return None if value in allowed else f"allowed values are {allowed}"
    return check


def optional(check):
    def maybe(value: Any) -> str | None:
        return None if value is None else check(value)
    return maybe
