"""Is a gain the experts'? The chosen SB-MoE configuration against its attribution controls.

SB-MoE adds a trained head to the encoder, at a learning rate far above the encoder's; any trained head can
lift a weak encoder (stage 1 lifted the truncated ``minilm-l3`` from 0.076 to 0.32-0.44 nDCG@10 with heads
of every kind). A gain over plain fine-tuning is therefore credited to the **experts** only when the chosen
configuration also beats the **dense adapter** (the same head with one expert: a residual MLP trained the
same way), and to **learned routing** only when it beats **random routing** (the same experts, routed by a
fixed random projection; :mod:`sbmoe_ray.model.moe`). Each comparison is Δ = chosen − control with part 1's
inference (queries and seeds together, TOST, MDE: :mod:`sbmoe_ray.analysis.comparisons`), the attribution
comparisons adjusted as one family of their own. The controls are built from the configuration stage 2 chose
(its head and learning rates, :func:`sbmoe_ray.stages.promotion.controls_of`) and trained and tested like it on
the same fresh seeds; the random-routing control's expert load is reported beside them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sbmoe_ray.analysis.comparisons import ATTRIBUTION, Comparison, adjust_family, compare
from sbmoe_ray.analysis.records import ConfigGroup, best_group
from sbmoe_ray.analysis.routing import group_routing
from sbmoe_ray.analysis.summary import Answer
from sbmoe_ray.study.arms import ARMS, DECISIVE
from sbmoe_ray.study.claims import ClaimsConfig


def attribution_comparisons(groups: list[ConfigGroup], datasets: list[str], mode: str, claims: ClaimsConfig,
                            metric: str = "ndcg@10") -> list[Comparison]:
    """Each base model's chosen configuration against each of its tested attribution controls, per dataset."""
    rows = []
    for model in sorted({g.base_model for g in groups}):
        mine = [g for g in groups if g.base_model == model]
        chosen = best_group(mine, mode)
        for control in (g for g in mine if g.arm and g.tested and chosen is not None):
            rows += [replace(compare(chosen, control, d, claims, metric), against=control.arm)
                     for d in datasets if control.tested_on(d) and chosen.tested_on(d)]
    adjust_family(rows, ATTRIBUTION, claims)
    return rows


def credit(versus_baseline: str | None, versus_adapter: str | None) -> str:
    """What a gain on one test set may be credited to, from the two verdicts."""
    if versus_baseline != "better":
        return "no gain over plain fine-tuning to attribute"
    if versus_adapter is None:
        return ("a gain of the SB-MoE head, not attributed: no dense-adapter control was tested (dropped by the "
                "budget, or not in finetune.attribution; a longer budget_minutes or a faster machine settles it)")
    if versus_adapter == "better":
        return "a gain of the experts (it survives against the dense adapter)"
    return f"a gain of a trained head, not shown to be the experts' (vs the dense adapter: {versus_adapter})"


def attribution_summary(answers: list[Answer], rows: list[Comparison], groups: list[ConfigGroup] = (),
                        datasets: list[str] = ()) -> dict[str, Any]:
    """Per base model: the rows against each control, per dataset what its gain may be credited to, and the
    random-routing control's expert load (a control that sends everything to one expert tests nothing)."""
    out = {}
    for answer in answers:
        model = answer.base_model
        mine = [r for r in rows if r.base_model == model]
        adapter = {r.dataset: r.verdict for r in mine if r.against == DECISIVE}
        out[model] = {"rows": [r.to_dict() for r in mine],
                      "credit": {d: credit(c.verdict, adapter.get(d)) for d, c in answer.datasets.items()}}
        for group in (g for g in groups if g.base_model == model and g.arm == "random_routing" and g.tested):
            load = group_routing(group, list(datasets))
            if load is not None:
                out[model]["random_routing_load"] = {k: load[k] for k in ("effective_experts", "num_experts",
                                                                          "max_share", "unused_experts")}
    return out


def attribution_lines(attribution: dict[str, Any]) -> list[str]:
    """The report's table (chosen − control per test set, with its interval and verdict) and the credit."""
    if not any(a["rows"] for a in attribution.values()):
        return []
    lines = ["Attribution (Δ = chosen − control, nDCG@10; queries and seeds; adjusted over these comparisons):", "",
             "| base_model | test set | vs | Δ | 95% CI | verdict |", "|---|---|---|---|---|---|"]
    for model, a in attribution.items():
        lines += [f"| {model} | {r['dataset']} | {ARMS[r['against']].label} | {r['delta']:+.3f} | "
                  f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['verdict']} |" for r in a["rows"]]
    lines.append("")
    for model, a in attribution.items():        # one line per credit, naming the collections it holds for
        by_text: dict[str, list[str]] = {}
        for dataset, text in a["credit"].items():
            by_text.setdefault(text, []).append(dataset)
        lines += [f"- {model} on {', '.join(names)}: {text}" for text, names in by_text.items()]
    lines += [f"- {model} random routing's load (centred projection, test documents): effective experts "
              f"{a['random_routing_load']['effective_experts']:.2f} of {int(a['random_routing_load']['num_experts'])}, "
              f"largest share {a['random_routing_load']['max_share']:.2f}" for model, a in attribution.items()
              if a.get("random_routing_load")]
    return lines + [""]
