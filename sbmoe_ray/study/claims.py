"""What a study's answer may claim, declared before any result: the level, the correction, the equivalence
margin and the power at which a null result says what it could have seen (``analysis:`` in the study YAML).

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
from sbmoe_ray.limits import one_of, positive, setting


def _probability(value) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    return None if ok else "allowed range is (0, 1)"


@dataclass
class ClaimsConfig(ConfigBase):
    """How the answer's comparisons are tested (``analysis.*``)."""
    alpha: float = setting(0.05, _probability)                  # family-wise level (or FDR with fdr_bh)
    correction: str = setting("holm", one_of("holm", "fdr_bh"))  # over the confirmatory family
    margin: float = setting(0.01, positive)                     # TOST equivalence margin, in the metric's units
    power: float = setting(0.8, _probability)                   # for the minimum detectable effect
