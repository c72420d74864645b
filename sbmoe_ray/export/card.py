"""The model card of an exported retriever (the folder's ``README.md``, Hugging Face's format): what it is,
how to load it, where it came from (study, configuration, data) and what it scored, with the study's
intervals and verdicts when it is a study's answer. Only numbers the study recorded; nothing re-measured."""

from __future__ import annotations

import math
from typing import Any

from sbmoe_ray.study.space import label

CITATION = """@misc{sokli2025sbmoe,
  title = {Mixture of Experts Approaches in Dense Retrieval Tasks},
  author = {Sokli, Effrosyni and Kasela, Pranav and Peikos, Georgios and Pasi, Gabriella},
  year = {2025}, eprint = {2510.15683}, archivePrefix = {arXiv}
}"""


def _front_matter(base_model: str) -> list[str]:
    return ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
            "tags: [sentence-transformers, feature-extraction, dense-retrieval, mixture-of-experts, sb-moe]",
            f"base_model_source: {base_model}", "---", ""]


def _usage(name: str) -> list[str]:
    return ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
            f'model = SentenceTransformer("{name}", trust_remote_code=True)  # the SB-MoE head is sbmoe_module.py',
            'queries = model.encode(["what causes fever?"])', 'documents = model.encode(["Fever is ..."])',
            "scores = model.similarity(queries, documents)", "```", ""]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)


def _metrics(facts: dict[str, Any]) -> list[str]:
    answer = facts.get("answer")
    test, answer = facts.get("test", {}), answer.datasets if answer is not None else {}
    if not test:
        return ["No test metrics were recorded with this model.", ""]
    lines = ["| test set | nDCG@10 | Recall@100 | Δ nDCG@10 vs baseline [95 % CI] | verdict |", "|---|---|---|---|---|"]
    for dataset, m in test.items():
        c = answer.get(dataset) if facts.get("role") == "chosen" else None
        delta = f"{c.delta:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]" if c else ""
        lines.append(f"| {dataset} | {_fmt(m.get('ndcg@10'))} | {_fmt(m.get('recall@100'))} | {delta} | "
                     f"{c.verdict if c else ''} |")
    note = ("Δ and its interval count test queries and training seeds together; the verdict is the study's "
            "(an equivalence test for 'equivalent'; 'seed variance not estimated' below 3 seeds per arm).")
    return lines + ["", note if answer else "", ""]


def _depth(facts: dict[str, Any], config) -> str:
    """``top 1 of 6 layers`` (what trained of the encoder), from the trial's recorded config."""
    from sbmoe_ray.model.backbones import num_layers
    from sbmoe_ray.model.config import depth_label

    k = facts.get("trained_layers")
    if k is None:
        return "n/a"
    if facts.get("route") in ("cached_head", "zero_shot"):
        return depth_label(0)
    return depth_label(None if k == "all" else k, num_layers(config.base_model))


def _claim(facts: dict[str, Any]) -> list[str]:
    """The study's answer, as the first screen of its report says it (the primary claim in one sentence)."""
    from sbmoe_ray.analysis.sections.first_screen import claim_sentence, sides

    claim, answer = facts.get("claim"), facts.get("answer")
    if claim is None or answer is None:
        return []
    subject, against = sides(facts["stage"] == "finetune", answer.chosen.config)
    return ["## The study's answer", "", claim_sentence(claim, subject, against), ""]


def model_card(facts: dict[str, Any], config, name: str = "path/to/this/folder") -> str:
    """The card's markdown for an export with ``facts`` (:class:`sbmoe_ray.export.source.Exportable`)."""
    params = facts.get("params") or {"base_model": config.base_model, "num_experts": config.num_experts}
    head = (f"an SB-MoE block of {config.num_experts} experts (top-{config.top_k} in training, inference "
            f"{config.inference_top_k or 'as in training'})" if config.num_experts else "no SB-MoE head")
    origin = (f"Study `{facts['study']}`, stage `{facts['stage']}`: the {facts['role']} model of base "
              f"`{facts['answer'].base_model}`" if "study" in facts else f"Checkpoint `{facts.get('checkpoint')}`")
    lines = [*_front_matter(config.base_model), f"# SB-MoE retriever: {label(params)}", "",
             f"A dense bi-encoder (base `{config.base_model}`, {config.pooling} pooling, normalize={config.normalize}) "
             f"with {head} after the last layer (Sokli et al. 2025, arXiv 2510.15683), trained and exported by "
             "sbmoe-ray.", "", *_usage(name), "## Where it comes from", "", f"- {origin}.",
             f"- Configuration: `{label(params)}`, training seed {facts.get('seed', 'n/a')}, trial "
             f"`{facts.get('trial_id', 'n/a')}` ({facts.get('route', 'n/a')} route).",
             f"- Training data: `{facts.get('train_dataset', 'n/a')}` (BEIR format).",
             f"- Fine-tuned: {_depth(facts, config)}.", "", *_claim(facts), "## Test metrics", "",
             *_metrics(facts), "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)
