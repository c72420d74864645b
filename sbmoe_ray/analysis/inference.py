"""Inference over test queries and training seeds together, an equivalence test, and what a design can detect.

A study's claim is about a *configuration*: another set of queries and another training run could both move
the number. Scores y[s, q] of query q under replicate (training seed) s, for two arms A (m replicates) and B
(n replicates), scored on the same Q queries:

    Δ = mean_q [ ȳ_A(q) − ȳ_B(q) ]                       (each query's score averaged over each arm's seeds)
    Var(Δ) = σ²_b · (1/m + 1/n)  +  s²_d / Q

* ``s²_d / Q``: the query-sampling variance of the paired mean difference (the paired t-test's); it holds the
  seed x query interaction σ²_e (1/m + 1/n) / Q already;
* ``σ²_b``: the seed variance component, estimated from the two compared arms only, without the σ²_e / Q the
  replicate means carry (:mod:`sbmoe_ray.analysis.components`; a mixed model with the configuration and the
  query fixed and the seed random, Bouthillier et al. 2021, "Accounting for variance in machine learning
  benchmarks").

Degrees of freedom by Welch–Satterthwaite. Whether the test holds its level at the study's own components is
simulated (:mod:`sbmoe_ray.analysis.simulation`); the A/A check (:func:`aa_check`: replicate i against
replicate j of the *same* configuration) stays as a sanity line.

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

from sbmoe_ray.analysis.components import Components, estimate

# A seed variance is "estimated" for a comparison only when each arm has this many replicates; below it a
# difference is never reported as surviving on query evidence alone (two seeds give one df per arm).
MIN_SEEDS = 3


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
    seed_df: float = 0.0          # df of the seed variance component (0: not estimated)

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


def matrix(runs: list[dict[str, float]], queries: list[str]) -> np.ndarray:
    """Replicates' per-query scores as a (replicates, queries) array."""
    return np.array([[run[q] for q in queries] for run in runs], dtype=float)


def deterministic(arm: np.ndarray) -> bool:
    """Replicates that are all the same run (the zero-shot encoder, whatever its seed): no seed variance."""
    return arm.ndim == 2 and arm.shape[0] >= 2 and bool((arm == arm[0]).all())


def random_arms(a: np.ndarray, b: np.ndarray) -> tuple[list[np.ndarray], float]:
    """The arms a seed moves (a deterministic one has no seed component and adds no df), and the factor on σ²_b
    in Var(Δ): 1/m + 1/n, less the term of a deterministic arm."""
    arms = [x for x in (a, b) if not deterministic(x)]
    return arms, sum(1 / x.shape[-2] for x in arms)


def combined_arrays(a: np.ndarray, b: np.ndarray, components: Components | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Δ, its variance, the query part of it and the Welch–Satterthwaite df for arms ``a`` (..., m, Q) and
    ``b`` (..., n, Q); ``components`` estimated from the arms a seed moves unless given (an arm whose replicates
    are one run, e.g. the zero-shot encoder, is not pooled with the other)."""
    q = a.shape[-1]
    arms, factor = random_arms(a, b)
    comps = components if components is not None else estimate(arms or [a, b])
    diff = a.mean(-2) - b.mean(-2)
    v_query = diff.var(-1, ddof=1) / q
    v_seed = np.asarray(comps.seed) * factor if comps.estimated else np.zeros_like(v_query)
    total = v_query + v_seed
    with np.errstate(divide="ignore", invalid="ignore"):
        seed_term = np.where(v_seed > 0, v_seed ** 2 / np.maximum(comps.seed_df, 1e-300), 0.0)
        df = np.where(total > 0, total ** 2 / (v_query ** 2 / (q - 1) + seed_term), np.inf)
    return diff.mean(-1), total, v_query, df


def combined(a_runs: list[dict[str, float]], b_runs: list[dict[str, float]], components: Components | None = None,
             level: float = 0.95) -> Estimate:
    """Arm A (replicates' per-query scores) against arm B, queries and seeds counted together; the seed
    component from the two arms (or ``components``); with one replicate per arm, the query part alone."""
    queries = common_queries(a_runs + b_runs)
    if len(queries) < 2:
        raise ValueError(f"a paired comparison needs >= 2 common queries, got {len(queries)}")
    a, b = matrix(a_runs, queries), matrix(b_runs, queries)
    comps = components if components is not None else estimate(random_arms(a, b)[0] or [a, b])
    delta, total, v_query, df = (float(x) for x in combined_arrays(a, b, comps))
    n_q, estimated, seed_df = len(queries), min(len(a_runs), len(b_runs)) >= MIN_SEEDS, float(comps.seed_df)
    if total == 0:
        return Estimate(delta, 0.0, math.inf, delta, delta, 1.0 if delta == 0 else 0.0, n_q, 0.0, estimated, seed_df)
    se = math.sqrt(total)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(delta) / se, df))
    return Estimate(delta, se, df, delta - half, delta + half, p, n_q, math.sqrt(v_query), estimated, seed_df)


def aa_check(replicates: dict[str, list[dict[str, float]]], alpha: float = 0.05) -> dict[str, float | int]:
    """Replicate i against replicate j of the same configuration, every pair: how often the combined test
    and the query-only paired t-test reject at ``alpha``, where every rejection is false (a sanity line, not
    a calibration: one replicate per side, and the configuration's own components). ``replicates``: per
    (configuration, test set) key, each replicate's per-query scores."""
    pairs = combined_rejections = query_rejections = 0
    for runs in replicates.values():
        queries = common_queries(runs)
        if len(queries) < 2:
            continue
        comps = estimate([matrix(runs, queries)])
        for a, b in itertools.combinations(runs, 2):
            queries = common_queries([a, b])
            if len(queries) < 2:
                continue
            pairs += 1
            combined_rejections += combined([a], [b], comps).p < alpha
            x, y = [a[q] for q in queries], [b[q] for q in queries]
            p = stats.ttest_rel(x, y).pvalue if np.any(np.subtract(x, y)) else 1.0
            query_rejections += p < alpha
    rate = (lambda k: k / pairs if pairs else math.nan)
    return {"pairs": pairs, "alpha": alpha, "combined_rate": rate(combined_rejections),
            "query_only_rate": rate(query_rejections)}
