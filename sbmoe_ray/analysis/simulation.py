"""Does the study's test hold its level at the study's own variance components? An A/B size simulation.

The combined test (:func:`sbmoe_ray.analysis.inference.combined`) approximates the distribution of Δ / SE by a t
with Welch–Satterthwaite df; with 3 seeds an arm its seed component rests on 4 df, and whether the
approximation holds is a question of the components. So the study answers it for its own: draws of two arms
of m and n replicates on Q queries from the model of :mod:`sbmoe_ray.analysis.components` at the estimated
σ²_b, σ²_e and query-difference variance σ²_d = s²_d − σ²_e (1/m + 1/n) (floored at 0),

    A[s, q] = effect + d_q + b_s + e[s, q],    B[s, q] = b'_s + e'[s, q]

run through the very estimator and test a study runs (vectorised), and the share of draws it rejects at α is
the test's size (``effect`` 0) or its power (``effect`` > 0), with a Clopper–Pearson interval (statsmodels).
A size far from α means the printed p-values are not to be read at face value, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from sbmoe_ray.analysis.components import Components
from sbmoe_ray.analysis.inference import combined_arrays

DRAWS = 2000
CHUNK = 250                     # draws held in memory at a time


@dataclass(frozen=True)
class RejectionRate:
    """How often the test rejected at ``alpha`` over ``draws`` simulated studies, with a 95 % interval."""

    rate: float
    low: float
    high: float
    draws: int
    alpha: float
    effect: float
    seeds: tuple[int, int]
    queries: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RejectionRate:
        return cls(**{**values, "seeds": tuple(values["seeds"])})

    @property
    def calibration(self) -> str:
        """For a size (no effect): "anti-conservative" when its whole interval lies above α (the test rejects a
        true null more often than it says), "conservative" when below, else "" (consistent with α)."""
        if self.effect != 0:
            return ""
        return "anti-conservative" if self.low > self.alpha else "conservative" if self.high < self.alpha else ""

    def text(self) -> str:
        what = "size" if self.effect == 0 else f"power at Δ = {self.effect:+.3f}"
        return (f"{what} {self.rate:.1%} [{self.low:.1%}, {self.high:.1%}] at α = {self.alpha:g} "
                f"({self.draws} simulated A/B comparisons, {self.seeds[0]} vs {self.seeds[1]} seeds, "
                f"{self.queries} queries)" + (f": {self.calibration}" if self.calibration else ""))


def query_difference_variance(s2_d: float, interaction: float, m: int, n: int) -> float:
    """σ²_d, the variance over queries of the arms' true per-query difference: s²_d less its seed x query part."""
    return max(0.0, s2_d - (interaction if not math.isnan(interaction) else 0.0) * (1 / m + 1 / n))


def draw_arms(rng: np.random.Generator, draws: int, m: int, n: int, queries: int, seed: float, interaction: float,
              query_diff: float, effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` pairs of arms (draws, m, Q) and (draws, n, Q) from the components."""
    d = rng.normal(0.0, math.sqrt(query_diff), (draws, 1, queries))
    a = (effect + d + rng.normal(0.0, math.sqrt(seed), (draws, m, 1))
         + rng.normal(0.0, math.sqrt(interaction), (draws, m, queries)))
    b = rng.normal(0.0, math.sqrt(seed), (draws, n, 1)) + rng.normal(0.0, math.sqrt(interaction), (draws, n, queries))
    return a, b


def rejection_rate(seed: float, interaction: float, query_diff: float, m: int, n: int, queries: int,
                   alpha: float = 0.05, effect: float = 0.0, draws: int = DRAWS, rng_seed: int = 0) -> RejectionRate:
    """The combined test's rejection rate at ``alpha`` for simulated arms with these components."""
    from statsmodels.stats.proportion import proportion_confint

    rng, rejected = np.random.default_rng(rng_seed), 0
    for start in range(0, draws, CHUNK):
        a, b = draw_arms(rng, min(CHUNK, draws - start), m, n, queries, seed, interaction, query_diff, effect)
        delta, total, _, df = combined_arrays(a, b)
        p = 2 * stats.t.sf(np.abs(delta) / np.sqrt(total), df)
        rejected += int((p < alpha).sum())
    low, high = proportion_confint(rejected, draws, alpha=0.05, method="beta")
    return RejectionRate(rejected / draws, float(low), float(high), draws, alpha, effect, (m, n), queries)


def size_at(components: Components, s2_d: float, m: int, n: int, alpha: float = 0.05, draws: int = DRAWS,
            rng_seed: int = 0) -> RejectionRate:
    """The size of the combined test at a comparison's own estimated components (``s2_d``: its per-query
    difference variance)."""
    seed = float(components.seed) if components.estimated else 0.0
    return rejection_rate(seed, float(components.interaction), query_difference_variance(
        s2_d, float(components.interaction), m, n), m, n, components.queries, alpha, 0.0, draws, rng_seed)


def primary_size(claim, alpha: float, draws: int = DRAWS, rng_seed: int = 0) -> RejectionRate:
    """The size of the primary claim's test (:mod:`sbmoe_ray.analysis.primary`) at its own estimated components:
    per collection σ²_e and σ²_d, the shared seed component σ²_z and, collections random, τ² (the true Δ_c drawn
    around a mean of 0), rejected at ``alpha`` (the claim's adjusted level)."""
    from statsmodels.stats.proportion import proportion_confint

    from sbmoe_ray.analysis.primary import claim_of

    m, n = claim.seeds
    rng, rejected = np.random.default_rng(rng_seed), 0
    sigma_z = claim.seed_component
    for _ in range(draws):
        shared = rng.normal(0.0, math.sqrt(sigma_z), m), rng.normal(0.0, math.sqrt(sigma_z), n)
        arrays = {}
        for name, c in claim.components.items():
            a, b = draw_arms(rng, 1, m, n, c["queries"], 0.0, c["interaction"], c["query_diff"],
                             rng.normal(0.0, math.sqrt(claim.tau2)) if claim.pooling == "random" else 0.0)
            a, b = a[0] + shared[0][:, None], b[0] + shared[1][:, None]
            arrays[name] = (a, np.repeat(b[:1] * 0, n, axis=0) if claim.fixed_baseline else b)
        rejected += claim_of("", "", arrays, claim.pooling, claim.margin).p < alpha
    low, high = proportion_confint(rejected, draws, alpha=0.05, method="beta")
    return RejectionRate(rejected / draws, float(low), float(high), draws, alpha, 0.0, (m, n),
                         sum(c["queries"] for c in claim.components.values()))
