"""The primary claim: one number per base model, declared before the study runs, with the power to answer it.

Each test collection tested alone cannot reach the effects at issue (the SB-MoE paper's gains are
+0.001..+0.023 nDCG@10; the query term alone of one collection gives SE 0.004-0.007). The primary claim is
therefore across collections (``analysis.primary``): the chosen SB-MoE configuration against plain fine-tuning,
the **unweighted mean over the declared collections** of Δ_c (each collection's Δ as in
:func:`sbmoe_ray.analysis.inference.combined`).

Collections random (the default: the claim is about collections like these), the variance is the spread of
the Δ_c themselves, which holds each collection's query and seed noise and the collections' disagreement τ² at
once, with the part of the seed a training run shares across collections put back (it moves every Δ_c alike,
so their spread cannot see it):

    Var(Δ̄) = s²_Δ / C + (C σ²_z − mean_c σ²_b,c) (1/m + 1/n) / (C − 1),     t on C − 1 df

(s²_Δ: the sample variance of the Δ_c; σ²_z: the seed component of the collection-averaged replicate score, less
its Σ_c σ²_e,c / (Q_c C²); σ²_b,c: each collection's seed component, :mod:`~sbmoe_ray.analysis.components`). The
seed estimates are the unbiased ANOVA ones, not truncated at 0 (a truncated component errs high exactly where the
truth is 0, which makes the test conservative there); the total is floored at half of s²_Δ / C. This is the
unweighted analogue of the Hartung–Knapp–Sidik–Jonkman random-effects test (IntHout, Ioannidis & Borm 2014, BMC
Med Res Methodol 14:25): its C − 1 df are what few collections give, where a Paule–Mandel τ² with Satterthwaite
df is anti-conservative (the size simulation, :func:`sbmoe_ray.analysis.simulation.primary_size`, checks both at
a study's own components; the results pages give the figures). τ² itself (Paule–Mandel, statsmodels
``combine_effects``) is still reported, and the size simulation draws the true Δ_c with it.

Collections fixed (``collections: fixed``: the claim is about these collections only, and says so):

    Var(Δ̄) = Σ_c (s²_d,c / Q_c) / C² + σ²_z (1/m + 1/n),     df by Welch–Satterthwaite

(queries independent across collections; one training run moves every collection at once, so its seed is
counted once, in the collection mean). The claim's family is one primary claim per base model, adjusted over
the base models (Holm); its minimum detectable effect is at the first Holm step's α. Per-collection results
are secondary and adjusted apart (:mod:`sbmoe_ray.analysis.comparisons`).

What the claim can detect at the planned seeds and collections, before stage 2: :mod:`sbmoe_ray.analysis.power`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from sbmoe_ray.analysis.comparisons import adjust
from sbmoe_ray.analysis.components import estimate
from sbmoe_ray.analysis.inference import MIN_SEEDS, Estimate, common_queries, deterministic, matrix, random_arms
from sbmoe_ray.analysis.power import mde, satterthwaite, t_quantile
from sbmoe_ray.analysis.simulation import RejectionRate, primary_size


@dataclass
class PrimaryClaim:
    """The primary claim of one base model: Δ̄ over the declared collections, its inference and its power."""

    base_model: str
    statement: str
    collections: list[str]
    pooling: str                        # random or fixed
    delta: float
    low: float                          # its 95 % interval
    high: float
    se: float
    df: float
    p: float
    tost_p: float
    margin: float
    seeds: tuple[int, int]
    per_collection: dict[str, float]
    variance: dict[str, float]          # its parts: queries, seeds (the shared seed), spread (s²_Δ / C; random)
    tau2: float
    components: dict[str, dict[str, float]]     # per collection: queries, σ²_e, σ²_d (what the simulation draws from)
    seed_component: float = 0.0         # σ²_z: a training run's move of the collection mean
    fixed_baseline: bool = False        # the baseline's replicates are one run (the zero-shot encoder)
    p_adjusted: float = math.nan
    tost_p_adjusted: float = math.nan
    mde: float = math.nan               # at the first Holm step's α
    alpha_adjusted: float = math.nan
    verdict: str = ""
    notes: list[str] = field(default_factory=list)
    size: dict | None = None            # the A/B size simulation at these components

    def to_dict(self) -> dict:
        return asdict(self)


def collection_parts(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict]:
    """Per collection (arm A (m, Q_c), arm B (n, Q_c)): Δ_c, its query variance, the components, the arms."""
    parts = {}
    for name, (a, b) in arrays.items():
        diff = a.mean(0) - b.mean(0)
        arms, factor = random_arms(a, b)
        parts[name] = {"delta": float(diff.mean()), "v_query": float(diff.var(ddof=1)) / a.shape[1],
                       "components": estimate(arms or [a, b]), "a": a, "b": b, "queries": a.shape[1],
                       "factor": factor}
    return parts


def as_arrays(a_runs: dict[str, list[dict[str, float]]], b_runs: dict[str, list[dict[str, float]]]
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per collection, both arms' replicates over the queries every one of them scored."""
    out = {}
    for name in a_runs:
        queries = common_queries(a_runs[name] + b_runs[name])
        out[name] = (matrix(a_runs[name], queries), matrix(b_runs[name], queries))
    return out


def seed_term(parts: dict[str, dict]) -> tuple[float, float]:
    """σ²_z, the seed component of the collection-averaged replicate score (the unbiased estimate: it may be
    negative), and its df."""
    c = len(parts)
    z = [np.mean([p[arm].mean(1) for p in parts.values()], axis=0) for arm in ("a", "b")
         if not deterministic(next(iter(parts.values()))[arm])]
    df_z = sum(len(v) - 1 for v in z)
    if df_z == 0:
        return 0.0, 0.0
    ms_z = sum(float(((v - v.mean()) ** 2).sum()) for v in z) / df_z
    carried = [(float(p["components"].interaction) / (p["queries"] * c * c), p["components"].df_error)
               for p in parts.values() if p["components"].estimated]
    raw = ms_z - sum(v for v, _ in carried)
    if raw <= 0:
        return raw, float(df_z)
    return raw, raw ** 2 / (ms_z ** 2 / df_z + sum(v ** 2 / d for v, d in carried))


def spread_variance(parts: dict[str, dict], sigma_z: float) -> tuple[float, float, float]:
    """Collections random: Var(Δ̄) from the spread of the Δ_c with the shared seed put back (the module's
    formula), as (total, the spread's part s²_Δ / C, the shared seed's part)."""
    c, factor = len(parts), next(iter(parts.values()))["factor"]
    spread = float(np.var([p["delta"] for p in parts.values()], ddof=1)) / c
    per_collection = np.mean([(float(p["components"].ms_seed) - float(p["components"].ms_error)) / p["queries"]
                              if p["components"].estimated else 0.0 for p in parts.values()])
    shared = (c * sigma_z - float(per_collection)) * factor / (c - 1)
    return max(spread + shared, spread / 2), spread, shared


def between_collections(parts: dict[str, dict]) -> float:
    """τ², the variance of the true Δ_c across collections (Paule–Mandel, statsmodels)."""
    from statsmodels.stats.meta_analysis import combine_effects

    deltas = np.array([p["delta"] for p in parts.values()])
    variances = np.array([p["v_query"] + (float(p["components"].seed) * p["factor"]
                                         if p["components"].estimated else 0.0) for p in parts.values()])
    return float(combine_effects(deltas, np.maximum(variances, 1e-12), method_re="pm").tau2)


def primary_claim(base_model: str, statement: str, a_runs: dict[str, list[dict[str, float]]],
                  b_runs: dict[str, list[dict[str, float]]], pooling: str, margin: float) -> PrimaryClaim:
    """Arm A against arm B over the collections of ``a_runs`` (per collection, each replicate's per-query scores,
    replicate i of a collection being the same trained model as replicate i of another)."""
    return claim_of(base_model, statement, as_arrays(a_runs, b_runs), pooling, margin)


def claim_of(base_model: str, statement: str, arrays: dict[str, tuple[np.ndarray, np.ndarray]], pooling: str,
             margin: float) -> PrimaryClaim:
    """:func:`primary_claim` on arrays (what the size simulation calls)."""
    parts = collection_parts(arrays)
    c, (m, n) = len(parts), (next(iter(arrays.values()))[0].shape[0], next(iter(arrays.values()))[1].shape[0])
    notes = []
    v_query = sum(p["v_query"] for p in parts.values()) / c ** 2
    df_query = satterthwaite([(p["v_query"] / c ** 2, p["queries"] - 1) for p in parts.values()])
    sigma_z, df_z = seed_term(parts)
    factor = next(iter(parts.values()))["factor"]            # 1/m + 1/n, less a deterministic arm's term
    if pooling == "random" and c < 2:
        notes.append("one collection: the between-collection variance cannot be estimated; the claim is about it alone")
        pooling = "fixed"
    if min(m, n) < 2:
        notes.append("one replicate an arm: the seed variance is not estimated; the interval holds queries only")
    if pooling == "random":
        tau2 = between_collections(parts)
        total, spread, shared = spread_variance(parts, sigma_z)
        variance, df = {"queries": v_query, "spread": spread, "seeds": shared}, float(c - 1)
    else:
        tau2, v_seed = 0.0, max(sigma_z, 0.0) * factor
        total, variance = v_query + v_seed, {"queries": v_query, "seeds": v_seed}
        df = satterthwaite([(v_query, df_query), (v_seed, df_z)])
    delta = float(np.mean([p["delta"] for p in parts.values()]))
    se = math.sqrt(total)
    half = t_quantile(0.975, df) * se
    p = float(2 * stats.t.sf(abs(delta) / se, df)) if se > 0 else float(delta == 0)
    tost = Estimate(delta, se, df, delta - half, delta + half, p, 0, 0.0, True).tost(margin)
    return PrimaryClaim(base_model, statement, list(parts), pooling, delta, delta - half, delta + half, se, df, p,
                        tost, margin, (m, n), {k: v["delta"] for k, v in parts.items()},
                        variance, tau2, {k: pilot_components(v) for k, v in parts.items()}, max(sigma_z, 0.0),
                        deterministic(next(iter(arrays.values()))[1]), notes=notes)


def pilot_components(part: dict) -> dict[str, float]:
    """One collection's queries, σ²_e and σ²_d, as the power plan and the size simulation read them."""
    comps = part["components"]
    interaction = float(comps.interaction) if comps.estimated else 0.0
    s2_d = part["v_query"] * part["queries"]
    return {"queries": part["queries"], "interaction": interaction,
            "query_diff": max(0.0, s2_d - interaction * part["factor"])}


def adjust_primary(claims: list[PrimaryClaim], alpha: float, power: float, correction: str = "holm") -> None:
    """p and TOST p adjusted over the primary family (one claim per base model), the MDE at the first Holm
    step's α, and each claim's verdict."""
    family = len(claims)
    for claim, p, tost in zip(claims, adjust([c.p for c in claims], correction),
                              adjust([c.tost_p for c in claims], correction)):
        claim.p_adjusted, claim.tost_p_adjusted, claim.alpha_adjusted = p, tost, alpha / family
        claim.mde = mde(claim.se, claim.df, alpha / family, power)
        if min(claim.seeds) < MIN_SEEDS:
            claim.verdict = f"seed variance not estimated (< {MIN_SEEDS} seeds an arm): nothing claimed"
        elif p < alpha:
            claim.verdict = "better" if claim.delta > 0 else "worse"
        elif tost < alpha:
            claim.verdict = f"equivalent within ±{claim.margin:g}"
        else:
            claim.verdict = f"inconclusive (detectable: ±{claim.mde:.3f})"


def primary_claims(groups, mode: str, claims, collections: list[str], statement: str,
                   metric: str = "ndcg@10") -> list[PrimaryClaim]:
    """Per base model, validation's SB-MoE choice against its baseline over ``collections`` (those both tested),
    adjusted over the base models, each with the A/B size simulation at its own components."""
    from sbmoe_ray.analysis.records import baselines, best_group

    out, paired = [], baselines(groups)
    for model in sorted({g.base_model for g in groups}):
        chosen, base = best_group([g for g in groups if g.base_model == model], mode), paired.get(model)
        if chosen is None or base is None:
            continue
        names = [d for d in collections if chosen.tested_on(d) and base.tested_on(d)]
        if not names:
            continue
        a = {d: [r.per_query(d, metric) for r in chosen.records] for d in names}
        b = {d: [r.per_query(d, metric) for r in base.records] for d in names}
        out.append(primary_claim(model, statement, a, b, claims.primary.collections, claims.margin))
    adjust_primary(out, claims.alpha, claims.power, claims.correction)
    for claim in out:
        if claims.primary.size_draws and min(claim.seeds) >= 2:
            claim.size = primary_size(claim, claim.alpha_adjusted, claims.primary.size_draws).to_dict()
    return out


def claim_lines(claims: list[PrimaryClaim]) -> list[str]:
    """The report's first screen: each primary claim, its estimate, interval, p, TOST p, MDE and the test's size."""
    lines = []
    for c in claims:
        lines += [f"**Primary claim ({c.base_model}): {c.statement}** — mean Δ nDCG@10 over "
                  f"{len(c.collections)} collections ({', '.join(c.collections)}; collections {c.pooling}), "
                  f"{c.seeds[0]} vs {c.seeds[1]} seeds: **{c.delta:+.4f}**, 95% CI "
                  f"[{c.low:+.4f}, {c.high:+.4f}], p = {c.p:.3g} (adjusted {c.p_adjusted:.3g}), "
                  f"TOST p (±{c.margin:g}) = {c.tost_p_adjusted:.3g} adjusted; detectable |Δ| ≥ {c.mde:.3f} "
                  f"at α = {c.alpha_adjusted:g}. **Verdict: {c.verdict}.**", ""]
        if c.size:
            lines += [f"The test's {RejectionRate.from_dict(c.size).text()}, simulated at this study's own variance "
                      "components (seed, seed x query, query, between collections).", ""]
        lines += [f"- {n}" for n in c.notes] + ([""] if c.notes else [])
    return lines
