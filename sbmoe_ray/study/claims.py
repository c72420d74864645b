"""What a study's answer may claim, declared before any result: the primary claim, the level, the correction,
the equivalence margin and the power at which a null result says what it could have seen (``analysis:`` in the
study YAML; part of the study's identity, so a claim cannot change after the data).

The primary claim (``analysis.primary``, :mod:`sbmoe_ray.analysis.primary`): per base model, the SB-MoE
configuration validation chose against plain fine-tuning, as the mean Δ nDCG@10 over the declared test
collections (``test_sets``; unless named, every test set but the training collection, whose in-domain result is
secondary), the collections a random effect
(``collections: random``) or these collections only (``fixed``). One primary claim per base model, adjusted
over the base models; the per-collection comparisons are secondary.

The confirmatory family is fixed by the design, not by what the search happened to try: per base model, the
configuration validation chose against its baseline, on every test set (Holm over those by default); every
other comparison is exploratory and labelled so. "No difference" is claimed only from an equivalence test
(TOST) at ``margin``: the default 0.01 nDCG@10 is half the largest gain the SB-MoE paper reports (Sokli et
al. 2025: +0.001..+0.023) and about the spread of one recipe over training runs on SciFact (0.667..0.680);
a smaller margin asks for more queries and seeds than these collections have (the report prints each test
set's minimum detectable effect). Nothing here imports numpy or scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

from sbmoe_ray.config import ConfigBase
from sbmoe_ray.limits import int_range, one_of, positive, setting


def _probability(value) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    return None if ok else "allowed range is (0, 1)"


def _names(value) -> str | None:
    ok = value is None or (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
                           and len(set(value)) == len(value))
    return None if ok else "a list of distinct test set names, or null for every test set of the study"


@dataclass
class PrimaryConfig(ConfigBase):
    """The primary claim (``analysis.primary.*``)."""
    # The collections it averages over; null: every test set but the training collection (in-domain: secondary)
    test_sets: list[str] | None = setting(None, _names)
    collections: str = setting("random", one_of("random", "fixed"))   # random effect, or these collections only
    size_draws: int = setting(2000, int_range(0, 100_000))  # A/B size simulation at the study's components; 0: none


@dataclass
class ClaimsConfig(ConfigBase):
    """How the answer's comparisons are tested (``analysis.*``)."""
    primary: PrimaryConfig = setting(factory=PrimaryConfig)
    alpha: float = setting(0.05, _probability)                  # family-wise level (or FDR with fdr_bh)
    correction: str = setting("holm", one_of("holm", "fdr_bh"))  # over the confirmatory family
    margin: float = setting(0.01, positive)                     # TOST equivalence margin, in the metric's units
    power: float = setting(0.8, _probability)                   # for the minimum detectable effect
