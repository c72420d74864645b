"""The proxy check: does stage 1 (frozen encoder) rank configurations as stage 2 (fine-tuning) does?

Low-fidelity proxies can rank configurations wrongly, and a frozen backbone is such a proxy. Per base
model, over the promoted and control configurations: Kendall's τ and Spearman's ρ (scipy) between the
stage-1 and the stage-2 objective (both validation metrics), with a 95 % percentile bootstrap interval over
configurations (``scipy.stats.bootstrap``, paired; a resample that repeats one configuration only counts
as no association; undefined below 4 configurations, where it is reported as such), and one sentence of
verdict.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import stats


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
    return (f"{base_model}: the proxy agrees with fine-tuning on these {n} configurations "
            f"(τ = {tau:+.2f}, p = {p:.2g}): "
            "supportive, not conclusive; more controls (finetune.controls) would settle it.")
