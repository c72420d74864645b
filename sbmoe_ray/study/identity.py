"""A study's identity: every setting that shapes its results, and the versions of the code that computes them.

A study is resumed by running it again under the same name. That is safe only if the run that continues
is the study that began: a re-run with another number of epochs, batch size, dataset, test set or base
model would mix trials of two studies under one report and one MLflow parent run. So the first run
records its identity (``fingerprint.json``) and every later run of that name must match it; a mismatch
is refused, listing each changed key with its old and new value, before anything is written. A setting added
to sbmoe-ray since the study began is no change while it keeps its default (the older code computed that).

Settings that only say *where* or *how fast* (:data:`MAY_CHANGE`: concurrency, the dashboard, the
locations of the data and the cache) may change between runs. The versions of the packages that compute
the numbers (:data:`VERSIONED`) are part of the identity too; ``--allow-new-versions`` accepts an
upgrade explicitly, and the record then keeps both.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from sbmoe_ray.errors import ConfigError
from sbmoe_ray.runtime.environment import package_versions

# Settings a resumed study may change: they decide where files are and how many trials run at once, not what
# a trial computes. Everything else a study config holds is its identity.
MAY_CHANGE = ("proxy.max_concurrent", "finetune.max_concurrent", "train.scaling.dashboard", "train.data.data_dir",
              "train.memory.cache_dir", "storage_path")
VERSIONED = ("sbmoe-ray", "torch", "transformers", "ray", "optuna")     # code that computes a study's numbers


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict) and values:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): values}


def settings_of(study) -> dict[str, Any]:
    """Every setting of ``study`` (a resolved :class:`~sbmoe_ray.study.config.StudyConfig`) by dotted key, as
    JSON would read it back, less :data:`MAY_CHANGE`."""
    flat = _flat(json.loads(json.dumps(asdict(study), default=str)))
    return {k: v for k, v in flat.items() if not any(k == m or k.startswith(m + ".") for m in MAY_CHANGE)}


def identity(study) -> dict[str, Any]:
    return {"settings": settings_of(study), "versions": package_versions(VERSIONED)}


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    def shown(values: dict[str, Any], key: str) -> str:
        return json.dumps(values[key]) if key in values else "(absent)"

    keys = sorted(set(old) | set(new))
    return [f"{k}: {shown(old, k)} -> {shown(new, k)}" for k in keys if shown(old, k) != shown(new, k)]


def check_identity(study, saved: dict[str, Any] | None, allow_new_versions: bool = False) -> dict[str, Any]:
    """The identity to record: ``study``'s, refused when a study of that name exists (``saved``) with other
    settings or, unless ``allow_new_versions``, other package versions. Reads and writes nothing."""
    current = identity(study)
    if saved is None:
        return current
    where = f"config.name={study.name!r}: a study of that name exists in {study.layout.root}"
    if "settings" not in saved:            # a fingerprint of sbmoe-ray 0.1: the search only
        raise ConfigError(f"{where}, recorded by an older sbmoe-ray that kept only its search space; finish it "
                          "with that version, or pick another name")
    # A setting added since the study began, at its default, computes what the older code computed.
    defaults = settings_of(type(study)())
    added = {k for k, v in current["settings"].items() if k not in saved["settings"] and k in defaults
             and json.dumps(v) == json.dumps(defaults[k])}
    changed = _changes(saved["settings"], {k: v for k, v in current["settings"].items() if k not in added})
    if changed:
        raise ConfigError(f"{where} with other settings:\n  " + "\n  ".join(changed) + "\nA resumed study must keep "
                          "every setting (these may change: " + ", ".join(MAY_CHANGE) + "). Restore them to "
                          "resume it, or give the new study another name (--set name=...)")
    moved = _changes(saved["versions"], current["versions"])
    if moved and not allow_new_versions:
        raise ConfigError(f"{where}, run with other package versions:\n  " + "\n  ".join(moved) + "\nIts trials so "
                          "far were computed with the old ones. Reinstall them to resume, or accept the change "
                          "with --allow-new-versions (the record keeps both)")
    if moved:
        current["earlier_versions"] = saved.get("earlier_versions", []) + [saved["versions"]]
    elif "earlier_versions" in saved:
        current["earlier_versions"] = saved["earlier_versions"]
    return current
