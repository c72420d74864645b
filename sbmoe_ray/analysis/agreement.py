"""The proxy check: does stage 1 (frozen encoder) rank configurations as stage 2 (fine-tuning) does?

Low-fidelity proxies can rank configurations wrongly, and a frozen backbone is such a proxy. Per base
model, over the promoted and control configurations stage 2 fine-tuned (both stages' validation
objectives):

* Kendall's τ with its *exact* p (scipy, no ties: the permutation distribution over all n! orderings). With n
  configurations the smallest two-sided p is 2 / n!: 0.083 at n = 4, so no verdict can be "trusted" there,
  and the verdict says so ("underpowered") instead of printing an interval. A percentile bootstrap interval
  over configurations is given only from :data:`BOOTSTRAP_FROM` configurations on (below, it is degenerate:
  over 4 points it can only be [-1, 1], [+1, +1] or [-1, -1]);
* Spearman's ρ, descriptive;
* what matters for the decision: top-k recall (of the k configurations stage 1 promoted, how many are among
  stage 2's top k) and regret (how much worse, in stage 2's objective, the proxy's first pick is than the
  best fine-tuned configuration).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from sbmoe_ray.analysis.summary import ConfigurationRow

BOOTSTRAP_FROM = 10


@dataclass
class ProxyCheck:
    """One base model's proxy check over the configurations both stages trained (:func:`proxy_check`)."""

    configurations: int
    smallest_p: float                       # the smallest exact p Kendall's τ can reach over them
    kendall_tau: float
    kendall_tau_p: float
    kendall_tau_ci: list[float]             # NaN below BOOTSTRAP_FROM configurations
    spearman_rho: float
    spearman_rho_p: float
    spearman_rho_ci: list[float]
    top_k_recall: float = math.nan
    regret: float = math.nan
    k: int = 0                              # the promoted configurations the recall is over
    verdict: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The report's line: τ with its exact p (an interval only where the bootstrap means something)."""
        quality = (f", top-{self.k} recall {self.top_k_recall:.2f}, regret {self.regret:.4f}"
                   if self.k and not math.isnan(self.top_k_recall) else "")
        return (f"- τ = {self.kendall_tau:+.2f}{_ci(self.kendall_tau_ci)} (exact p = {self.kendall_tau_p:.2g}), "
                f"ρ = {self.spearman_rho:+.2f}{_ci(self.spearman_rho_ci)} over {self.configurations} configurations"
                f"{quality}. {self.verdict}")


def _ci(interval: list[float]) -> str:
    low, high = interval
    return "" if math.isnan(low) else f" [{low:+.2f}, {high:+.2f}]"


def proxy_check(rows: list[ConfigurationRow], promoted: int, mode: str, base_model: str,
                alpha: float = 0.05) -> ProxyCheck:
    """The proxy check over ``rows`` (one per configuration, both stages' objectives): τ, ρ, the decision's
    quality and the verdict."""
    agreement = rank_agreement([r.stage1_objective for r in rows], [r.stage2_objective for r in rows])
    return ProxyCheck(**agreement, **decision_quality(rows, promoted, mode),
                      verdict=verdict(agreement, base_model, alpha))


def smallest_p(n: int) -> float:
    """The smallest two-sided exact p Kendall's τ can reach over n untied configurations."""
    return min(1.0, 2.0 / math.factorial(n)) if n >= 2 else 1.0


def _bootstrap(x: np.ndarray, y: np.ndarray, fn) -> list[float]:
    if len(x) < BOOTSTRAP_FROM or np.ptp(x) == 0 or np.ptp(y) == 0:
        return [math.nan, math.nan]

    def statistic(a, b):                  # a resample with one repeated configuration orders nothing: 0
        value = fn(a, b).statistic
        return 0.0 if np.isnan(value) else value

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        boot = stats.bootstrap((x, y), statistic, paired=True, vectorized=False, n_resamples=2000,
                               method="percentile", random_state=0)
    return [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]


def rank_agreement(stage1: list[float], stage2: list[float]) -> dict[str, Any]:
    """Kendall's τ (exact p) and Spearman's ρ between the two stages' objectives, with bootstrap intervals
    from :data:`BOOTSTRAP_FROM` configurations on (NaN below)."""
    x, y = np.asarray(stage1, dtype=float), np.asarray(stage2, dtype=float)
    out: dict[str, Any] = {"configurations": len(x), "smallest_p": smallest_p(len(x))}
    for name, fn, kwargs in (("kendall_tau", stats.kendalltau, {"method": "exact"}),
                             ("spearman_rho", stats.spearmanr, {})):
        test = None
        if len(x) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tied = len(set(x)) < len(x) or len(set(y)) < len(y)     # exact p needs untied ranks
                test = fn(x, y, **({} if tied else kwargs))
        out[name] = float(test.statistic) if test is not None else math.nan
        out[f"{name}_p"] = float(test.pvalue) if test is not None else math.nan
        out[f"{name}_ci"] = _bootstrap(x, y, fn)
    return out


def decision_quality(rows: list[ConfigurationRow], promoted: int, mode: str) -> dict[str, float]:
    """Top-k recall of the promoted configurations among stage 2's top k, and the regret of the proxy's
    first pick in stage 2's objective (0: it was the best fine-tuned configuration)."""
    if not rows or promoted < 1:
        return {"top_k_recall": math.nan, "regret": math.nan}
    sign = 1.0 if mode == "min" else -1.0
    by_stage1 = sorted(rows, key=lambda r: sign * r.stage1_objective)
    by_stage2 = sorted(rows, key=lambda r: sign * r.stage2_objective)
    k = min(promoted, len(rows))
    top1, top2 = {r.config for r in by_stage1[:k]}, {r.config for r in by_stage2[:k]}
    regret = sign * (by_stage1[0].stage2_objective - by_stage2[0].stage2_objective)
    return {"top_k_recall": len(top1 & top2) / k, "regret": float(regret), "k": k}


def verdict(agreement: dict[str, Any], base_model: str, alpha: float = 0.05) -> str:
    """One sentence: can the proxy be trusted for this base model and data? Trusted only when τ > 0 with
    Kendall's exact test significant at ``alpha``; "underpowered" where no ordering could be."""
    tau, p, n = agreement["kendall_tau"], agreement["kendall_tau_p"], agreement["configurations"]
    if n < 3 or math.isnan(tau):          # two configurations are always ranked "perfectly", with p = 1
        return f"{base_model}: too few configurations ({n}) to check the proxy."
    if smallest_p(n) >= alpha:
        return (f"{base_model}: underpowered: p < {alpha:g} is impossible with n = {n} configurations (the smallest "
                f"exact p is {smallest_p(n):.3f}); τ = {tau:+.2f} describes these {n} only. Raise finetune.controls "
                "(with 6 configurations τ >= 0.87 reaches exact p < 0.05).")
    if tau <= 0:
        return (f"{base_model}: the proxy does not rank like fine-tuning (τ = {tau:+.2f} over {n} configurations): "
                "do not trust it for this base model; choose by stage 2.")
    if p < alpha:
        return (f"{base_model}: the proxy ranks like fine-tuning (τ = {tau:+.2f}, exact p = {p:.2g}): it can be "
                "trusted here.")
    return (f"{base_model}: the proxy agrees with fine-tuning on these {n} configurations (τ = {tau:+.2f}, exact "
            f"p = {p:.2g}): not significant; more controls (finetune.controls) would settle it.")
