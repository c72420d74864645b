"""Variance components of a comparison: how far a training run (seed) moves a configuration's score, apart from
how far it moves single queries.

Per arm (a configuration with k replicates, scored on the same Q queries), a two-way layout without
replication, the query effect fixed (each arm has its own), the seed random:

    y[s, q] = μ_q + b_s + e[s, q],    b_s ~ N(0, σ²_b)  (the seed),   e ~ N(0, σ²_e)  (seed x query)

The ANOVA mean squares (Searle, Casella & McCulloch 1992, ch. 4) of one arm

    MS_S = Q Σ_s (ȳ_s − ȳ)² / (k − 1)                      E = σ²_e + Q σ²_b
    MS_E = Σ_s,q (y − ȳ_s − ȳ_q + ȳ)² / ((k − 1)(Q − 1))   E = σ²_e

pooled over the two compared arms (sums of squares and df added; the arms share σ²_b and σ²_e, not their
means), give σ̂²_b = max(0, (MS_S − MS_E) / Q) and σ̂²_e = MS_E. The replicate means' own variance, MS_S / Q,
estimates σ²_b + σ²_e / Q: used as the seed variance (as before this module), it counts the seed x query
interaction a second time, since the paired query variance s²_d / Q of :func:`sbmoe_ray.analysis.inference.combined`
already holds it. With the queries shared by every replicate of both arms (the analysis intersects them), the
design is balanced within each arm and the pooled estimate is the REML estimate whenever it is positive, for
equal or unequal seed counts; :func:`mixedlm` fits the same model with statsmodels' ``MixedLM`` (the tests
check the two agree, and it is the fallback for a design that is not balanced).

Every function takes arrays with any leading batch dimensions, so that the size simulation
(:mod:`sbmoe_ray.analysis.simulation`) runs the very estimator a study runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Components:
    """σ²_b (``seed``) and σ²_e (``interaction``) of the arms they were pooled over, with the mean squares."""

    seed: np.ndarray | float            # σ²_b, ≥ 0
    interaction: np.ndarray | float     # σ²_e
    seed_df: np.ndarray | float         # Satterthwaite df of σ̂²_b (0: not estimated)
    ms_seed: np.ndarray | float
    ms_error: np.ndarray | float
    df_seed: int                        # Σ (k_a − 1)
    df_error: int                       # Σ (k_a − 1)(Q − 1)
    queries: int

    @property
    def estimated(self) -> bool:
        return self.df_seed > 0

    def replicate_mean_variance(self) -> np.ndarray | float:
        """What one replicate's mean varies by around its configuration's: σ²_b + σ²_e / Q (= MS_S / Q)."""
        return self.seed + self.interaction / self.queries



def sums_of_squares(y: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int]:
    """One arm's (..., k, Q) scores: SS_S, its df, SS_E, its df."""
    k, q = y.shape[-2:]
    seed_means, query_means = y.mean(-1), y.mean(-2)
    grand = seed_means.mean(-1)
    ss_seed = q * ((seed_means - grand[..., None]) ** 2).sum(-1)
    resid = y - seed_means[..., None] - query_means[..., None, :] + grand[..., None, None]
    return ss_seed, k - 1, (resid ** 2).sum((-2, -1)), (k - 1) * (q - 1)


def estimate(arms: list[np.ndarray]) -> Components:
    """σ²_b and σ²_e pooled over ``arms`` (each (..., k_a, Q), the same Q); an arm of one replicate adds nothing."""
    q = arms[0].shape[-1]
    if any(a.shape[-1] != q for a in arms):
        raise ValueError(f"every arm must be scored on the same queries, got {[a.shape[-1] for a in arms]}")
    parts = [sums_of_squares(a) for a in arms if a.shape[-2] >= 2]
    df_s, df_e = sum(p[1] for p in parts), sum(p[3] for p in parts)
    if df_s == 0 or q < 2:
        zero, nan = np.zeros(arms[0].shape[:-2])[()], np.full(arms[0].shape[:-2], np.nan)[()]
        return Components(zero, nan, zero, nan, nan, 0, 0, q)
    ms_s, ms_e = sum(p[0] for p in parts) / df_s, sum(p[2] for p in parts) / df_e
    raw = (ms_s - ms_e) / q
    seed = np.maximum(raw, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(raw > 0, (ms_s - ms_e) ** 2 / (ms_s ** 2 / df_s + ms_e ** 2 / df_e), df_s)
    return Components(seed[()], ms_e[()], df[()], ms_s[()], ms_e[()], df_s, df_e, q)


def mixedlm(arms: list[np.ndarray]) -> tuple[float, float]:
    """σ²_b and σ²_e by REML with statsmodels' ``MixedLM`` (fixed arm x query cells, a random intercept per
    replicate): the reference :func:`estimate` is checked against, and what an unbalanced design needs."""
    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    rows = [{"y": float(y[s, q]), "cell": f"{a}:{q}", "replicate": f"{a}:{s}"}
            for a, y in enumerate(arms) for s in range(y.shape[0]) for q in range(y.shape[1])]
    with warnings.catch_warnings():    # statsmodels warns of the boundary on every fit here; the tests check it
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = smf.mixedlm("y ~ 0 + C(cell)", pd.DataFrame(rows), groups="replicate").fit(reml=True)
    return float(fit.cov_re.iloc[0, 0]), float(fit.scale)
