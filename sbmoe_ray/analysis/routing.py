"""Routing of the chosen configurations, beyond load shares: do the experts specialise, and is it stable?

Expert load (the share of each expert) says whether routing collapsed, not whether it means anything. Per
chosen SB-MoE configuration (every replicate's test evaluations, :mod:`sbmoe_ray.evaluation.routing`):

* **co-routing**: how often a query and its relevant document have the same top-1 expert, against the
  chance level of independent pairing with the same marginals (``lift`` = same / chance; 1 = no
  query-document specialisation);
* **expert vs collection**: mutual information (bits) between a document's top-1 expert and the test
  collection it belongs to, and its normalised form (NMI, 0 = experts ignore the collection, 1 = each
  collection has its own experts), scikit-learn's ``mutual_info_score`` / ``normalized_mutual_info_score``;
  the SB-MoE paper's hypothesis is that experts specialise by domain (Sokli et al. 2025, arXiv 2510.15683);
* **agreement across seeds**: the adjusted Rand index of the documents' top-1 experts between replicates
  (expert numbers are arbitrary per run, so the partition is compared, not the labels; 0 = chance, 1 = the
  same partition), mean over pairs of replicates; undefined where a replicate sends every document to one
  expert (two such "partitions" agree trivially: scikit-learn returns 1);
* **collapse**: effective number of experts exp(H(top-1 share)) over all test documents, the largest
  share, and experts that no document chose.

Means over replicates. A study recorded before routing was logged has no assignments; the report says so.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from sbmoe_ray.analysis.records import ConfigGroup, TrialRecord


def _assignments(record: TrialRecord, datasets: list[str]) -> dict[str, dict[str, Any]]:
    return {t["dataset"]: t["routing"] for t in record.test
            if t["dataset"] in datasets and t.get("routing", {}).get("doc_top1")}


def _collection_stats(per_dataset: dict[str, dict[str, Any]]) -> dict[str, float]:
    """MI between expert and collection, and collapse, over one replicate's test documents."""
    from sklearn.metrics import mutual_info_score, normalized_mutual_info_score

    experts = np.concatenate([np.asarray(r["doc_top1"]) for r in per_dataset.values()])
    collections = np.concatenate([np.full(len(r["doc_top1"]), i) for i, r in enumerate(per_dataset.values())])
    num_experts = next(iter(per_dataset.values()))["num_experts"]
    share = np.bincount(experts, minlength=num_experts) / len(experts)
    entropy = -float(sum(p * math.log(p) for p in share if p > 0))
    several = len(per_dataset) > 1
    return {"mi_bits": mutual_info_score(collections, experts) / math.log(2) if several else math.nan,
            "nmi": normalized_mutual_info_score(collections, experts) if several else math.nan,
            "effective_experts": math.exp(entropy), "max_share": float(share.max()),
            "unused_experts": int((share == 0).sum()), "num_experts": int(num_experts)}


def seed_agreement(replicates: list[dict[str, dict[str, Any]]], dataset: str) -> float:
    """Mean adjusted Rand index of the documents' top-1 experts over pairs of replicates (NaN below two)."""
    from sklearn.metrics import adjusted_rand_score

    runs = [r[dataset]["doc_top1"] for r in replicates if dataset in r and len(set(r[dataset]["doc_top1"])) > 1]
    scores = [adjusted_rand_score(a, b) for a, b in itertools.combinations(runs, 2)]
    return float(np.mean(scores)) if scores else math.nan


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def group_routing(group: ConfigGroup, datasets: list[str]) -> dict[str, Any] | None:
    """One configuration's routing statistics (means over its replicates); None without recorded routing."""
    replicates = [a for a in (_assignments(r, datasets) for r in group.records) if a]
    if not replicates:
        return None
    per_dataset = {}
    for d in datasets:
        runs = [r[d] for r in replicates if d in r]
        if runs:
            same, chance = _mean(r["same_expert"] for r in runs), _mean(r["chance"] for r in runs)
            per_dataset[d] = {"same_expert": same, "chance": chance,
                              "lift": same / chance if chance > 0 else math.nan,
                              "seed_ari": seed_agreement(replicates, d)}
    stats = [_collection_stats(r) for r in replicates]
    collection = {k: _mean(s[k] for s in stats) for k in stats[0]}
    return {"config": group.key, "replicates": len(replicates), "datasets": per_dataset, **collection}


def routing_summary(groups: list[ConfigGroup], chosen: dict[str, str], datasets: list[str]) -> dict[str, Any]:
    """Per base model, the routing of its chosen configuration (``chosen``: base model -> group key)."""
    by_key = {g.key: g for g in groups}
    out = {}
    for base_model, key in sorted(chosen.items()):
        routing = group_routing(by_key[key], datasets) if key in by_key else None
        if routing is not None:
            out[base_model] = routing
    return out


def routing_lines(summary: dict[str, Any]) -> list[str]:
    """The report's paragraph: one line per base model."""
    if not summary:
        return ["Routing: no expert assignments recorded for the chosen configurations (a study recorded before "
                "routing was logged, or no SB-MoE configuration chosen)."]
    lines = []
    for base_model, r in summary.items():
        per = "; ".join(f"{d}: same expert {v['same_expert']:.2f} vs chance {v['chance']:.2f} "
                        f"(lift {v['lift']:.2f}), seed ARI {_fmt(v['seed_ari'])}" for d, v in r["datasets"].items())
        collapsed = " **Collapsed: one expert takes every test document** (the head acts as one dense adapter)." \
            if r["max_share"] >= 0.999 else ""
        lines.append(f"- {base_model} ({r['replicates']} replicate(s)): expert vs collection MI {_fmt(r['mi_bits'])} "
                     f"bits (NMI {_fmt(r['nmi'])}); effective experts {r['effective_experts']:.2f} of "
                     f"{r['num_experts']}, largest share {r['max_share']:.2f}, unused (mean over replicates) "
                     f"{r['unused_experts']:.1f}.{collapsed} {per}.")
    return lines


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def routing_metrics(summary: dict[str, Any], show) -> dict[str, float]:
    """Flat MLflow metrics of the parent run (``show``: a base model's short name)."""
    out = {}
    for base_model, r in summary.items():
        prefix = f"routing.{show(base_model)}"
        for key in ("mi_bits", "nmi", "effective_experts", "max_share", "unused_experts"):
            out[f"{prefix}.{key}"] = float(r[key])
        for d, v in r["datasets"].items():
            out.update({f"{prefix}.{d}.{k}": float(v[k]) for k in ("same_expert", "chance", "lift", "seed_ari")})
    return {k: v for k, v in out.items() if not math.isnan(v)}
