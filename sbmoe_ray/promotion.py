"""Stage 2 of a study: which proxy configurations are fine-tuned, and whether the proxy ranked them right.

The main job is a two-fidelity study. Stage 1, the proxy, trains SB-MoE heads on a frozen encoder
(seconds a trial) and searches the space; stage 2 fine-tunes the encoder with the head (minutes a trial)
for a few configurations only. Per base model stage 2 takes

* the top ``promote`` configurations by the stage-1 objective (mean over seeds),
* ``controls`` configurations drawn at random (seeded) from the rest of stage 1, so that the rank check
  below is not made among winners only (low-fidelity proxies can rank configurations wrongly: a frozen
  backbone is such a proxy),
* the base model's plain fine-tuning baseline (``num_experts = 0``).

The choice depends only on stage 1's finished results and the study's seed, and is written once
(``<study>/finetune/promoted.json``), so a resumed study promotes exactly what it would have promoted.

The proxy's validity, per base model, over the promoted and control configurations: Kendall's τ and
Spearman's ρ (scipy) between the stage-1 and the stage-2 objective (both validation metrics), with a
95 % percentile bootstrap interval over configurations (``scipy.stats.bootstrap``, paired; a resample
that repeats one configuration only counts as no association; undefined below 4 configurations, where it
is reported as such).
"""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from sbmoe_ray.results import ConfigGroup

PROMOTED_FILE = "promoted.json"
ROLES = ("promoted", "control", "baseline")


def rank(groups: list[ConfigGroup], mode: str) -> list[ConfigGroup]:
    """SB-MoE configurations with a finite mean objective, best first (ties by key, for determinism)."""
    moe = [g for g in groups if not g.is_baseline and not math.isnan(g.objective)]
    sign = 1.0 if mode == "min" else -1.0
    return sorted(moe, key=lambda g: (sign * g.objective, g.key))


def promotions(groups: list[ConfigGroup], mode: str, promote: int, controls: int, seed: int) -> list[dict[str, Any]]:
    """Per base model: its top ``promote`` configurations, ``controls`` random others, and its baseline;
    each entry ``{base_model, role, params, stage1_group, stage1_objective, stage1_trials}``."""
    entries = []
    for base_model in sorted({g.base_model for g in groups}):
        ranked = rank([g for g in groups if g.base_model == base_model], mode)
        top, rest = ranked[:promote], sorted(ranked[promote:], key=lambda g: g.key)
        drawn = random.Random(f"{seed}:{base_model}").sample(rest, min(controls, len(rest)))
        for role, chosen in (("promoted", top), ("control", sorted(drawn, key=lambda g: g.key))):
            entries += [{"base_model": base_model, "role": role, "params": g.params, "stage1_group": g.key,
                         "stage1_objective": g.objective, "stage1_trials": [r.trial_id for r in g.records]}
                        for g in chosen]
        entries.append({"base_model": base_model, "role": "baseline", "params": {"base_model": base_model, "num_experts": 0},
                        "stage1_group": None, "stage1_objective": math.nan, "stage1_trials": []})
    return entries


def load_or_promote(folder: Path, settings: dict[str, Any], compute) -> list[dict[str, Any]]:
    """The promotions written before (a resumed study keeps them), else ``compute()`` written now; a
    resumed study with other promotion settings is refused (its stage 2 would mix two selections)."""
    from sbmoe_ray.errors import ConfigError

    path = Path(folder) / PROMOTED_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["settings"] != settings:
            changed = ", ".join(f"{k}={saved['settings'].get(k)}" for k in settings if saved["settings"].get(k) != settings[k])
            raise ConfigError(f"config.promote/finetune: stage 2 of this study was started with {changed} ({path}); "
                              "restore those settings to resume it, or pick another study name")
        return saved["entries"]
    entries = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "entries": entries}, indent=2))
    tmp.replace(path)
    return entries


def rank_agreement(stage1: list[float], stage2: list[float]) -> dict[str, Any]:
    """Kendall's τ and Spearman's ρ between the two stages' objectives, each with its 95 % bootstrap
    interval over configurations (NaN below 4 configurations or without variation)."""
    x, y = np.asarray(stage1, dtype=float), np.asarray(stage2, dtype=float)
    out: dict[str, Any] = {"configurations": len(x)}
    for name, fn in (("kendall_tau", stats.kendalltau), ("spearman_rho", stats.spearmanr)):
        test = fn(x, y) if len(x) >= 2 else None
        value = float(test.statistic) if test is not None else math.nan
        out[f"{name}_p"] = float(test.pvalue) if test is not None else math.nan   # exact for small n (Kendall)
        low = high = math.nan
        if len(x) >= 4 and np.ptp(x) > 0 and np.ptp(y) > 0:
            def statistic(a, b, fn=fn):      # a resample with one repeated configuration orders nothing: 0
                value = fn(a, b).statistic
                return 0.0 if np.isnan(value) else value

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # constant resamples (handled above)
                boot = stats.bootstrap((x, y), statistic, paired=True, vectorized=False, n_resamples=2000,
                                       method="percentile", random_state=0)
            low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        out[name], out[f"{name}_ci"] = value, [low, high]
    return out


def verdict(agreement: dict[str, Any], base_model: str) -> str:
    """One sentence: can the proxy be trusted for this base model and data? Trusted only when τ > 0 with
    Kendall's test significant at 0.05 (an exact test: with 4 configurations even τ = 1 has p = 0.08)."""
    tau, p, n = agreement["kendall_tau"], agreement["kendall_tau_p"], agreement["configurations"]
    if math.isnan(tau) or n < 3:          # two configurations are always ranked "perfectly", with p = 1
        return f"{base_model}: too few configurations ({n}) to check the proxy."
    if tau <= 0:
        return (f"{base_model}: the proxy does not rank like fine-tuning (τ = {tau:+.2f} over {n} configurations): "
                "do not trust it for this base model; choose by stage 2.")
    if p < 0.05:
        return f"{base_model}: the proxy ranks like fine-tuning (τ = {tau:+.2f}, p = {p:.2g}): it can be trusted here."
    return (f"{base_model}: the proxy agrees with fine-tuning on these {n} configurations (τ = {tau:+.2f}, p = {p:.2g}): "
            "supportive, not conclusive; more controls (finetune.controls) would settle it.")
