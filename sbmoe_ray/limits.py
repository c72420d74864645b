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
    """A finite number (not NaN, not ±inf, not a bool)."""
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else "must be a positive integer"


def non_negative_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "must be an integer >= 0"


def non_negative(value: Any) -> str | None:
    return None if _number(value) and value >= 0 else "must be a finite number >= 0"


def positive(value: Any) -> str | None:
    return None if _number(value) and value > 0 else "must be a finite number > 0"


def gpu_share(value: Any) -> str | None:
    """A share of one GPU: (0, 1]."""
    return None if _number(value) and 0 < value <= 1 else "a share of one GPU in (0, 1] (1: a whole GPU each)"


def int_range(low: int, high: int):
    """An integer in [low, high] (the high end: what a machine or a study can hold)."""
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"must be an integer in [{low}, {high}]"
    return check


def distinct(value: Any) -> str | None:
    """A list without repeats."""
    if not isinstance(value, list):
        return "must be a list"
    repeated = sorted({str(v) for v in value if value.count(v) > 1})
    return f"lists {repeated} more than once; name each once" if repeated else None


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


NAME_MAX = 100      # a name that becomes a folder: well under every file system's 255 bytes, with its suffixes


def path_name(value: Any) -> str | None:
    """A name that becomes a folder or file name: letters, digits, '.', '_' and '-', 1-100 characters, not
    starting with '.' (so never '.', '..', a hidden file or a path of several parts)."""
    import re

    ok = isinstance(value, str) and re.fullmatch(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}", value)
    return None if ok else (f"a name of 1-{NAME_MAX} letters, digits, '.', '_' or '-', not starting with '.' (it "
                            "becomes a folder under the storage path: no '/', no '..')")
