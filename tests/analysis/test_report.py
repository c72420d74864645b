"""The report is written by one function from the stages' results: the answer table, the figures it links,
summary.json equal to the results; stage 2's section when it ran; written again, it is the same report."""

from __future__ import annotations

import json
import re

from sbmoe_ray.analysis.report import write_report
from sbmoe_ray.analysis.result import analyze_finetune, analyze_proxy
from sbmoe_ray.stages.promotion import promotions
from sbmoe_ray.study.config import StudyConfig

from helpers import study


def hand_study(tmp_path) -> StudyConfig:
    return StudyConfig.from_dict({"name": "hand", "storage_path": str(tmp_path / "studies"), "space": {
        "base_model": ["m"], "num_experts": [0, 3]}, "train": {"data": {"test_datasets": ["a", "b"]}}})


def test_stage_one_report_renders_the_result_and_links_only_figures_it_wrote(tmp_path):
    config = hand_study(tmp_path)
    proxy = analyze_proxy(config, study(seeds=2))
    write_report(config, proxy)
    layout = config.layout
    text = layout.report_file.read_text()
    answer = proxy.summary.per_base_model[0]
    assert f"**m**: validation prefers sb-moe; chosen `{answer.chosen.config}`, 2 seed(s)." in text
    rows = [line for line in text.splitlines() if line.startswith("| a |") or line.startswith("| b |")]
    assert len(rows) == 2 and all(line.count("|") == 9 for line in rows)         # 8 columns a collection
    assert f"{answer.datasets['a'].delta:.4f}" in text and "Holm-Bonferroni" in text
    assert "seed variance not estimated" in text and "nothing is claimed" in text          # 2 seeds per arm
    assert "A/A check (8 pairs" in text and answer.datasets["a"].verdict in text
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert "heatmap_a.png" in linked and all((layout.report_dir / name).is_file() for name in linked)
    written = json.loads(layout.summary_file.read_text())
    assert written.pop("regime")["finetune_trained_layers"] == config.finetune.trained_layers
    assert written == json.loads(json.dumps(proxy.summary.to_dict(), default=str))
    assert "Stage 2" not in text


def test_with_stage_two_the_report_has_both_stages_and_is_rewritten_not_appended(tmp_path):
    config = hand_study(tmp_path)
    proxy = analyze_proxy(config, study(seeds=2))
    entries = promotions(proxy.groups, "min", promote=1, controls=1, seed=0)
    # Stage 2's trials: the same hand-made records stand in for fine-tuned ones of the promoted configurations.
    finetune = analyze_finetune(config, study(seeds=2, seed=1), entries, 2, "set", {"stage 1": 60.0})
    write_report(config, proxy, finetune)
    first = config.layout.report_file.read_text()
    write_report(config, proxy, finetune)
    assert config.layout.report_file.read_text() == first and first.count("## Stage 2: fine-tuning") == 1
    headers = [line for line in first.splitlines() if line.startswith("## ")]
    order = ["## The answer", "## Stage 2: fine-tuning", "## Stage 1", "## Method"]
    at = [next(i for i, h in enumerate(headers) if h.startswith(o)) for o in order]
    assert at == sorted(at), headers                     # the answer first, the method last
    assert "fine-tuned SB-MoE `" in first.split("## Stage 2")[0] and "plain fine-tuning tuned alike" in first
    assert "stage_agreement.png" in first and (config.layout.report_dir / "stage_agreement.png").is_file()
    summary = json.loads(config.layout.summary_file.read_text())
    assert set(summary["finetune"]) >= {"configurations", "agreement", "seconds", "test"}
    assert [r["role"] for r in summary["finetune"]["configurations"]] == [e.role for e in entries]
    assert summary["finetune"]["agreement"]["m"]["verdict"] in first


def test_the_first_screen_is_the_primary_claim_with_its_interval_power_and_simulated_size(tmp_path):
    config = hand_study(tmp_path)
    proxy = analyze_proxy(config, study(seeds=3))
    write_report(config, proxy)
    text = config.layout.report_file.read_text()
    claim = proxy.summary.primary[0]
    first_screen = "\n".join(text.splitlines()[:12])
    assert claim.collections == ["a", "b"] and claim.pooling == "random" and tuple(claim.seeds) == (3, 3)
    assert "Primary claim (m)" in first_screen and f"{claim.delta:+.4f}" in first_screen
    assert (f"On 2 test collections, the SB-MoE head `{proxy.summary.per_base_model[0].chosen.config}` on "
            f"the frozen encoder changes nDCG@10 by {claim.delta:+.3f} [{claim.low:+.3f}, {claim.high:+.3f}]"
            f" against the encoder alone") in first_screen
    assert f"the design could have detected ±{claim.mde:.3f}." in first_screen
    assert first_screen.splitlines()[2].startswith("Regime: **Stage 1 only") and "3 vs 3 seeds" in first_screen
    assert f"[{claim.low:+.4f}, {claim.high:+.4f}]" in first_screen and claim.verdict in first_screen
    assert f"detectable |Δ| ≥ {claim.mde:.3f}" in first_screen
    size = claim.size
    assert size["draws"] == config.analysis.primary.size_draws and size["low"] <= size["rate"] <= size["high"]
    assert "simulated at this study's own variance components" in first_screen


def test_the_terminal_says_the_reports_sentence_then_one_short_row_per_collection(tmp_path):
    from sbmoe_ray.analysis.sections.first_screen import claim_sentence, sides, terminal_answer

    proxy = analyze_proxy(hand_study(tmp_path), study(seeds=3))
    lines = terminal_answer(proxy.summary, "stage 1", False)
    claim, answer = proxy.summary.primary[0], proxy.summary.per_base_model[0]
    sentence = claim_sentence(claim, *sides(False, answer.chosen.config))
    detail = next(i for i, line in enumerate(lines) if line.startswith("  (p "))
    said = " ".join(line.strip() for line in lines[1:detail])                 # the sentence, unwrapped
    assert sentence in said and f"TOST p {claim.tost_p_adjusted:.3g}" in "\n".join(lines)
    rows = {line.split()[0]: line for line in lines if line.startswith("    ") and not line.strip().startswith("coll")}
    assert set(rows) == {"a", "b"} and all(len(line) <= 120 for line in lines[1:])
    assert f"{answer.datasets['a'].delta:+7.3f}" in rows["a"]
