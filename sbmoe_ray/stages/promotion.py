"""Which stage-1 configurations stage 2 fine-tunes.

The main job is a two-fidelity study. Stage 1, the proxy, trains SB-MoE heads on a frozen encoder
(seconds a trial) and searches the space; stage 2 fine-tunes the encoder with the head (minutes a trial)
for a few configurations only. Per base model stage 2 takes

* the top ``promote`` configurations by the stage-1 objective (mean over seeds), each at every encoder learning
  rate of the shared grid (``finetune.encoder_lrs``: every arm is tuned alike),
* ``controls`` configurations drawn uniformly from the search space and run in stage 1 like the others
  (:func:`sbmoe_ray.study.space.space_draws`, enqueued by :mod:`sbmoe_ray.stages.proxy`), so that the
  rank check below is made neither among winners only nor among TPE's range-restricted picks (low-fidelity
  proxies can rank configurations wrongly: a frozen backbone is such a proxy); where a drawn one is also
  a top one it is promoted, and no other replaces it,
* the base model's plain fine-tuning baseline (``num_experts = 0``), tuned as much as SB-MoE is (issue 22:
  22 searched SB-MoE configurations against one fixed baseline favour SB-MoE by selection alone): the same
  encoder-lr grid, extended to as many candidates as SB-MoE has (``finetune.baseline_configs``), the one
  validation prefers tested (:func:`sbmoe_ray.analysis.records.best_baseline`),
* the attribution controls ``finetune.attribution`` (issue 22: any trained head lifts a weak encoder, so a gain
  over plain fine-tuning alone is not the experts'): the **dense adapter**, the same head with one expert
  (``N = 1``, ``k = 1``: a residual MLP at the same learning rates), and **random routing**, the same head whose
  routing is a fixed random projection (:mod:`sbmoe_ray.model.moe`). They are never candidates for the answer,
  only what it is compared with, so they are **built from the configuration stage 2 chooses** (its head, its
  encoder and head learning rates) when it is confirmed on fresh seeds (:func:`controls_of`); listed here (from
  stage 1's top) only so that the budget can plan them, and trained in selection only without confirmation.

The choice depends only on stage 1's finished results and the study's seed, and is written once
(``<study>/finetune/promoted.json``), so a resumed study promotes exactly what it would have promoted.

Whether the proxy ranked them right is :mod:`sbmoe_ray.analysis.agreement`.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from sbmoe_ray.analysis.records import ConfigGroup
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.study.arms import ARMS, control_params, is_arm
from sbmoe_ray.study.points import Promotion


def rank(groups: list[ConfigGroup], mode: str) -> list[ConfigGroup]:
    """SB-MoE configurations with a finite mean objective, best first (ties by key, for determinism)."""
    moe = [g for g in groups if not g.is_baseline and not math.isnan(g.objective)]
    sign = 1.0 if mode == "min" else -1.0
    return sorted(moe, key=lambda g: (sign * g.objective, g.key))


def drawn(group: ConfigGroup, points: list[dict[str, Any]]) -> bool:
    """Whether a configuration is one of the points drawn from the space (Optuna parameters)."""
    return any(all(group.params.get(k) == v for k, v in p.items() if k != "baseline") for p in points)


def attribution_arms(base_model: str, params: dict[str, Any], key: str, arms: list[str]) -> list[Promotion]:
    """The attribution controls of one configuration (``params``, its group ``key``): its dense adapter, its
    random routing."""
    entries = []
    for arm in arms:
        entries.append(Promotion(base_model, ARMS[arm].label, control_params(arm, params), key))
    return entries


def controls_of(entries: list[Promotion], chosen: dict[str, ConfigGroup]) -> list[Promotion]:
    """The attribution controls ``entries`` plans (one per base model and arm) rebuilt from each base model's
    configuration stage 2 chose (``chosen``), for its confirmation."""
    out = []
    for entry in entries:
        if is_arm(entry.role) and entry.base_model in chosen:
            group = chosen[entry.base_model]
            out += attribution_arms(entry.base_model, group.params, group.key, [entry.params["arm"]])
    return out


def with_rates(params: dict[str, Any], lrs: list[float]) -> list[dict[str, Any]]:
    """A configuration at each encoder learning rate of the grid (with one rate: as it is, at the stage's own)."""
    return [params] if len(lrs) <= 1 else [{**params, "encoder_lr": lr} for lr in lrs]


def baseline_entries(base_model: str, lrs: list[float]) -> list[Promotion]:
    """Plain fine-tuning at each encoder learning rate (one: the stage's own, not named in the parameters)."""
    params = {"base_model": base_model, "num_experts": 0}
    return [Promotion(base_model, "baseline", {**params, **({"encoder_lr": lr} if len(lrs) > 1 else {})})
            for lr in lrs]


def promotions(groups: list[ConfigGroup], mode: str, promote: int, controls: int, seed: int,
               points: list[dict[str, Any]] | None = None, arms: list[str] = (),
               baseline_lrs: list[float] = (0.0,), encoder_lrs: list[float] = ()) -> list[Promotion]:
    """Per base model: its top ``promote`` configurations (each at every rate of ``encoder_lrs``), its controls
    (the ``points`` drawn from the space; without points, ``controls`` random others of stage 1), its baselines
    (one per encoder learning rate of ``baseline_lrs``), and the attribution ``arms`` of its top configuration."""
    entries = []
    for base_model in sorted({g.base_model for g in groups}):
        ranked = rank([g for g in groups if g.base_model == base_model], mode)
        top, rest = ranked[:promote], sorted(ranked[promote:], key=lambda g: g.key)
        if points is not None:
            drawn_here = [g for g in rest if drawn(g, points)]
        else:
            drawn_here = random.Random(f"{seed}:{base_model}").sample(rest, min(controls, len(rest)))
        for role, chosen in (("promoted", top), ("control", sorted(drawn_here, key=lambda g: g.key))):
            entries += [Promotion(base_model, role, params, g.key, g.objective, tuple(r.trial_id for r in g.records))
                        for g in chosen for params in (with_rates(g.params, list(encoder_lrs)) if role == "promoted"
                                                       else [g.params])]
        entries += baseline_entries(base_model, list(baseline_lrs))
        entries += attribution_arms(base_model, top[0].params, top[0].key, list(arms)) if top else []
    return entries


def read_promotions(path: Path) -> list[Promotion]:
    return [Promotion.from_dict(e) for e in json.loads(path.read_text())["entries"]]


def load_or_promote(path: Path, settings: dict[str, Any], compute) -> list[Promotion]:
    """The promotions written before (a resumed study keeps them), else ``compute()`` written now; a
    resumed study with other promotion settings is refused (its stage 2 would mix two selections); a setting
    its file does not name (one added since it was written) is not compared."""
    if path.is_file():
        saved = json.loads(path.read_text())
        old = saved["settings"]
        changed = ", ".join(f"{k}={old[k]}" for k in settings if k in old and old[k] != settings[k])
        if changed:
            raise ConfigError(f"config.promote/finetune: stage 2 of this study was started with {changed} ({path}); "
                              "restore those settings to resume it, or pick another study name")
        return [Promotion.from_dict(e) for e in saved["entries"]]
    entries = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "entries": [e.to_dict() for e in entries]}, indent=2))
    tmp.replace(path)
    return entries
