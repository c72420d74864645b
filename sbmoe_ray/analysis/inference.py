"""Inference over test queries and training seeds together, an equivalence test, and what a design can detect.

A study's claim is about a *configuration*: another set of queries and another training run could both move
the number. Scores y[s, q] of query q under replicate (training seed) s, for two arms A (m replicates) and B
(n replicates), scored on the same Q queries:

    Δ = mean_q [ ȳ_A(q) − ȳ_B(q) ]                       (each query's score averaged over each arm's seeds)
    Var(Δ) ≈ σ²_seed · (1/m + 1/n)  +  s²_d / Q

* ``s²_d / Q``: the query-sampling variance of the paired mean difference (the paired t-test's);
* ``σ²_seed``: how far one replicate's mean score lies from its configuration's mean, pooled over every
  configuration of the same base model in the stage that has two or more replicates (the within mean
  square of a one-way random-effects ANOVA of replicate means, df = Σ (k_c − 1)): the seed variance component
  of a mixed model with the configuration fixed and the seed random (Bouthillier et al. 2021, "Accounting
  for variance in machine learning benchmarks"). Pooled, it is counted for both arms, the baseline too,
  even where one arm's replicates happen to agree.

Degrees of freedom by Welch–Satterthwaite; the seed x query interaction enters both terms, so the
interval errs wide. An A/A check (:func:`aa_check`: replicate i against replicate j of the *same*
configuration, where every rejection is a false one) calibrates it against the query-only t-test on the
same pairs. A mixed model with crossed query and seed effects (statsmodels ``MixedLM``) would give the
same components; it takes seconds per comparison and does not always converge, for hundreds of them.

"No difference" is claimed only from an equivalence test: TOST (two one-sided tests, Schuirmann 1987)
against a margin declared in the study config (``analysis.margin``), with the same standard error and df.
The minimum detectable effect at 80 % power, (t_{1-α/2} + t_{power}) · SE, says how large a difference a
null result could have seen.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

# A seed variance is "estimated" for a comparison only when each arm has this many replicates; below it a
# difference is never reported as surviving on query evidence alone (two seeds give one df per arm).
MIN_SEEDS = 3


@dataclass(frozen=True)
class SeedVariance:
    """The pooled seed variance component of one base model on one test set, and its degrees of freedom."""

    variance: float
    df: int

    @classmethod
    def pooled(cls, replicate_means: list[list[float]]) -> SeedVariance:
        """From each configuration's replicate means (configurations with one replicate add nothing)."""
        groups = [np.asarray(g, dtype=float) for g in replicate_means if len(g) >= 2]
        df = sum(len(g) - 1 for g in groups)
        if df == 0:
            return cls(math.nan, 0)
        return cls(float(sum(((g - g.mean()) ** 2).sum() for g in groups) / df), df)


@dataclass(frozen=True)
class Estimate:
    """Δ of arm A over arm B with its combined standard error, df, 95 % interval and two-sided p."""

    delta: float
    se: float
    df: float
    low: float
    high: float
    p: float
    queries: int
    query_se: float               # the query-sampling part alone (what the paired t-test uses)
    seeds_estimated: bool         # both arms have MIN_SEEDS replicates or more

    def tost(self, margin: float) -> float:
        """p of TOST for |Δ| < margin (the larger of the two one-sided p-values)."""
        if self.se == 0:
            return 0.0 if abs(self.delta) < margin else 1.0
        lower = stats.t.sf((self.delta + margin) / self.se, self.df)
        upper = stats.t.cdf((self.delta - margin) / self.se, self.df)
        return float(max(lower, upper))

    def mde(self, alpha: float = 0.05, power: float = 0.8) -> float:
        """The smallest |Δ| this design detects with ``power`` at two-sided ``alpha``."""
        return float((stats.t.ppf(1 - alpha / 2, self.df) + stats.t.ppf(power, self.df)) * self.se)


def common_queries(runs: list[dict[str, float]]) -> list[str]:
    return sorted(set(runs[0]).intersection(*runs[1:]))


def combined(a_runs: list[dict[str, float]], b_runs: list[dict[str, float]], seed: SeedVariance,
             level: float = 0.95) -> Estimate:
    """Arm A (replicates' per-query scores) against arm B, queries and seeds counted together; without a
    seed variance (no configuration had two replicates) the query part alone."""
    queries = common_queries(a_runs + b_runs)
    if len(queries) < 2:
        raise ValueError(f"a paired comparison needs >= 2 common queries, got {len(queries)}")
    diff = (np.array([[run[q] for q in queries] for run in a_runs]).mean(axis=0)
            - np.array([[run[q] for q in queries] for run in b_runs]).mean(axis=0))
    delta, n_q = float(diff.mean()), len(queries)
    v_query = float(diff.var(ddof=1)) / n_q
    v_seed = seed.variance * (1 / len(a_runs) + 1 / len(b_runs)) if seed.df else 0.0
    total = v_query + v_seed
    estimated = min(len(a_runs), len(b_runs)) >= MIN_SEEDS
    if total == 0:
        return Estimate(delta, 0.0, math.inf, delta, delta, 1.0 if delta == 0 else 0.0, n_q, 0.0, estimated)
    df = total ** 2 / (v_query ** 2 / (n_q - 1) + (v_seed ** 2 / seed.df if seed.df else 0.0))
    se = math.sqrt(total)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(delta) / se, df))
    return Estimate(delta, se, float(df), delta - half, delta + half, p, n_q, math.sqrt(v_query), estimated)


def aa_check(replicates: dict[str, list[dict[str, float]]], seeds: dict[str, SeedVariance],
             alpha: float = 0.05) -> dict[str, float | int]:
    """Replicate i against replicate j of the same configuration, every pair: how often the combined test
    and the query-only paired t-test reject at ``alpha``, where every rejection is false. ``replicates``:
    per (configuration, test set) key, each replicate's per-query scores; ``seeds``: the seed variance
    that key's comparisons use."""
    pairs = combined_rejections = query_rejections = 0
    for key, runs in replicates.items():
        for a, b in itertools.combinations(runs, 2):
            queries = common_queries([a, b])
            if len(queries) < 2:
                continue
            pairs += 1
            combined_rejections += combined([a], [b], seeds[key]).p < alpha
            x, y = [a[q] for q in queries], [b[q] for q in queries]
            p = stats.ttest_rel(x, y).pvalue if np.any(np.subtract(x, y)) else 1.0
            query_rejections += p < alpha
    rate = (lambda k: k / pairs if pairs else math.nan)
    return {"pairs": pairs, "alpha": alpha, "combined_rate": rate(combined_rejections),
            "query_only_rate": rate(query_rejections)}
