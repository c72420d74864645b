"""TREC run files: what the toolkit scored, written in the six standard columns, scored again by
pytrec_eval's own parsers (trec_eval's code), gives the same nDCG@10 and Recall@100 to 1e-4."""

from __future__ import annotations

import pytest
import pytrec_eval

from sbmoe_ray.cli import main
from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.evaluation.dense import EncodeSettings, evaluate
from sbmoe_ray.evaluation.trec import RUN_DEPTH, read_trec, write_trec
from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder

from helpers import trec_qrels


def _score(qrels_file, run_file) -> dict[str, float]:
    qrels = pytrec_eval.parse_qrel(trec_qrels(qrels_file))
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(
        pytrec_eval.parse_run(open(run_file)))
    return {m: sum(q[m] for q in per_query.values()) / len(per_query) for m in ("ndcg_cut_10", "recall_100")}


def test_a_run_file_scored_by_trec_eval_gives_the_reported_metrics(tiny_bert, tokenizer, data_dir, tmp_path):
    dataset = load_dataset("adi", "test", data_dir=data_dir)
    model = build_bi_encoder(ModelConfig(num_experts=3, top_k=1, pooling="mean", normalize=True), tiny_bert)
    result = evaluate(model, tokenizer, dataset, EncodeSettings(batch_size=16, progress=False))
    path = write_trec(result.run, tmp_path / "adi.trec", "tiny moe")
    lines = [line.split() for line in path.read_text().splitlines()]
    assert {len(line) for line in lines} == {6} and {line[1] for line in lines} == {"Q0"}
    assert {line[5] for line in lines} == {"tiny_moe"} and max(int(line[3]) for line in lines) == min(
        RUN_DEPTH, len(dataset.corpus))
    assert read_trec(path).keys() == result.run.keys()
    scored = _score(data_dir / "adi" / "qrels" / "test.tsv", path)
    assert scored["ndcg_cut_10"] == pytest.approx(result.metrics.means["ndcg@10"], abs=1e-4)
    assert scored["recall_100"] == pytest.approx(result.metrics.means["recall@100"], abs=1e-4)


def test_the_identical_id_rule_is_applied_before_the_file_is_written(tmp_path):
    run = {"q1": {"q1": 0.9, "d1": 0.8, "d2": 0.7}, "q2": {"q2": 0.5, "d3": 0.4}}
    from sbmoe_ray.evaluation.metrics import drop_identical, ranked

    path = write_trec(ranked(drop_identical(run, {"q1"}), RUN_DEPTH), tmp_path / "x.trec", "t")
    assert read_trec(path) == {"q1": {"d1": 0.8, "d2": 0.7}, "q2": {"q2": 0.5, "d3": 0.4}}


def test_sbmoe_evaluate_writes_run_files_on_request(tiny_bert, tokenizer, data_dir, tmp_path):
    folder = tmp_path / "model"
    tiny_bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    main(["evaluate", "--model", str(folder), "--dataset", "adi", "--data-dir", str(data_dir), "--output",
          str(tmp_path / "out.json"), "--trec-dir", str(tmp_path / "trec"), "--precision", "fp32"])
    import json

    reported = json.loads((tmp_path / "out.json").read_text())["results"][0]["metrics"]
    scored = _score(data_dir / "adi" / "qrels" / "test.tsv", tmp_path / "trec" / "adi.trec")
    assert scored["ndcg_cut_10"] == pytest.approx(reported["ndcg@10"], abs=1e-4)
