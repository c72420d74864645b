"""What a design can detect, planned before it runs: the minimum detectable effect, the narrowest margin an
equivalence test can show, and the power plan of the primary claim (:mod:`sbmoe_ray.analysis.primary`) from a
pilot's variance components (stage 1's claim), printed before stage 2 trains.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy import stats

MAX_PLANNED_SEEDS = 100


def t_quantile(q: float, df: float) -> float:
    return float(stats.t.ppf(q, df)) if math.isfinite(df) else float(stats.norm.ppf(q))


def satterthwaite(terms: list[tuple[float, float]]) -> float:
    """df of a sum of variance terms, each (value, its df)."""
    total, denominator = sum(v for v, _ in terms), sum(v ** 2 / d for v, d in terms if v > 0 and d > 0)
    return total ** 2 / denominator if denominator > 0 else math.inf


def mde(se: float, df: float, alpha: float, power: float) -> float:
    """The smallest |Δ| a two-sided test at ``alpha`` detects with ``power``."""
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * se


def equivalence_reach(se: float, df: float, alpha: float, power: float) -> float:
    """The smallest margin TOST at ``alpha`` shows with ``power`` when the true Δ is 0."""
    return (t_quantile(1 - alpha, df) + t_quantile(1 - (1 - power) / 2, df)) * se


@dataclass(frozen=True)
class PowerPlan:
    """What the primary claim can detect at the planned seeds and collections, from a pilot's components."""

    collections: list[str]
    seeds: int
    pooling: str
    se: float
    df: float
    mde: float
    alpha_adjusted: float
    margin: float
    power: float
    seeds_for_margin: int | None        # None: unreachable by seeds alone
    equivalence_reach: float            # the smallest margin TOST could show at Δ = 0
    pilot: str

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"power plan ({self.pilot}): the primary claim over {len(self.collections)} collections "
               f"({', '.join(self.collections)}), {self.seeds} seeds an arm, collections {self.pooling}: detectable "
               f"|Δ| ≥ {self.mde:.3f} nDCG@10 at {self.power:.0%} power, α = {self.alpha_adjusted:g} (first Holm step)"]
        if self.seeds_for_margin is None:
            out.append(f"  the margin ±{self.margin:g} is out of reach by seeds: what seeds do not reduce (the "
                       "queries' variance and, collections random, the collections' disagreement on C - 1 df) "
                       "already exceeds it; add collections (train.data.test_datasets) or widen analysis.margin")
        elif self.seeds_for_margin > self.seeds:
            out.append(f"  to detect ±{self.margin:g}: {self.seeds_for_margin} seeds an arm")
        out.append(f"  equivalence within ±{self.margin:g}: " + (
            "reachable" if self.equivalence_reach <= self.margin else
            f"unreachable with these collections and seeds (TOST shows ±{self.equivalence_reach:.3f} at best)"))
        return out


def power_plan(pilot: dict[str, dict[str, float]], sigma_z: float, seeds: int, pooling: str, tau2: float,
               alpha: float, family: int, power: float, margin: float, source: str) -> PowerPlan:
    """``pilot``: per collection its queries, σ²_e and σ²_d (the per-query difference variance of the arms'
    true scores); ``sigma_z``: the seed component of the collection-averaged score; ``tau2``: the between-
    collection variance assumed (0 when unknown, said in ``source``)."""
    c, a = len(pilot), alpha / family

    def se_df(m: int) -> tuple[float, float]:
        parts = [((p["query_diff"] + p["interaction"] * 2 / m) / p["queries"] / c ** 2, p["queries"] - 1)
                 for p in pilot.values()]
        terms = parts + [(sigma_z * 2 / m, 2 * (m - 1)), ((tau2 / c) if pooling == "random" else 0.0, c - 1)]
        # collections random: the claim's t has C − 1 df whatever the seeds (primary.py's spread variance)
        df = float(c - 1) if pooling == "random" and c > 1 else satterthwaite(terms)
        return math.sqrt(sum(v for v, _ in terms)), df

    se, df = se_df(seeds)
    needed = next((m for m in range(2, MAX_PLANNED_SEEDS + 1) if mde(*se_df(m), a, power) <= margin), None)
    return PowerPlan(list(pilot), seeds, pooling, se, df, mde(se, df, a, power), a, margin, power, needed,
                     equivalence_reach(se, df, a, power), source)


def plan_from_pilot(pilot, seeds: int, claims, family: int) -> PowerPlan:
    """The power plan of stage 2's primary claim from stage 1's (``pilot``: its
    :class:`~sbmoe_ray.analysis.primary.PrimaryClaim`): its per-collection query and seed x query components, its
    seed component of the collection mean and its τ²."""
    m, n = pilot.seeds
    sigma_z = pilot.seed_component
    source = (f"pilot: stage 1's claim, {m} vs {n} seeds; two fine-tuned arms may differ less per query, and a "
              "fine-tuning seed may move more than a head's")
    return power_plan(pilot.components, sigma_z, seeds, pilot.pooling, pilot.tau2, claims.alpha, family,
                      claims.power, claims.margin, source)
