"""Evaluation end to end on real data with a tiny model; exact search; the CLI; base-model loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sbmoe_ray.cli import main
from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.errors import ConfigError, ModelLoadError
from sbmoe_ray.evaluation.dense import EncodeSettings, encode, evaluate, exact_search
from sbmoe_ray.model.backbones import load_backbone, resolve_model
from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder


def test_exact_search_equals_brute_force():
    rng = np.random.default_rng(0)
    docs, queries = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    run = exact_search(docs, [f"d{i}" for i in range(50)], queries, ["a", "b", "c", "d"], k=5)
    for qi, qid in enumerate("abcd"):
        scores = docs @ queries[qi]
        expected = [f"d{i}" for i in np.argsort(-scores)[:5]]
        assert list(run[qid]) == expected
        assert run[qid][expected[0]] == pytest.approx(float(scores.max()), rel=1e-5)


def test_encoding_order_and_batching_do_not_change_embeddings(tiny_bert, tokenizer):
    model = build_bi_encoder(ModelConfig(num_experts=3, top_k=1, pooling="mean", normalize=True), tiny_bert)
    texts = ["short", "a much longer text with many more tokens in it", "medium length text", "x"]
    one_by_one = np.stack([encode(model, tokenizer, [t], EncodeSettings(progress=False))[0] for t in texts])
    batched = encode(model, tokenizer, texts, EncodeSettings(batch_size=3, progress=False))
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_end_to_end_on_a_real_dataset_with_an_moe_head(tiny_bert, tokenizer, data_dir):
    dataset = load_dataset("adi", "test", data_dir=data_dir)
    model = build_bi_encoder(ModelConfig(num_experts=3, top_k=2, pooling="mean", normalize=True), tiny_bert)
    result = evaluate(model, tokenizer, dataset, EncodeSettings(batch_size=16, progress=False))
    assert result.metrics.num_queries == len(dataset.qrels) == 35
    assert all(0.0 <= v <= 1.0 for v in result.metrics.means.values())
    assert result.expert_load.examples == len(dataset.corpus) == 82
    assert result.expert_load.counts.sum() == 2 * 82
    as_dict = result.to_dict()
    assert set(as_dict["per_query"]["ndcg@10"]) == set(dataset.qrels)
    assert as_dict["corpus_expert_load"]["load_max_over_mean"] >= 1.0


def test_bf16_encoding_is_close_to_fp32(tiny_bert, tokenizer):
    model = build_bi_encoder(ModelConfig(pooling="mean", normalize=True), tiny_bert)
    texts = [f"text number {i} " * (i + 1) for i in range(10)]
    fp32 = encode(model, tokenizer, texts, EncodeSettings(progress=False))
    bf16 = encode(model, tokenizer, texts, EncodeSettings(precision="bf16", progress=False))
    assert bf16.dtype == np.float32
    assert (fp32 * bf16).sum(axis=1).min() > 0.99          # cosine of unit vectors


def test_cli_evaluate_writes_json_and_prints_a_table(tiny_bert, tokenizer, data_dir, tmp_path, capsys):
    model_dir = tmp_path / "tiny-model"
    tiny_bert.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    output = tmp_path / "out.json"
    code = main(["evaluate", "--model", str(model_dir), "--dataset", "adi", "--data-dir", str(data_dir),
                 "--output", str(output), "--max-length", "64"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "adi" in printed
    written = json.loads(output.read_text())
    assert written["results"][0]["num_queries"] == 35
    assert written["model_config"]["max_length"] == 64


def test_max_length_beyond_the_model_is_a_clear_error(tiny_bert, tiny_dataset, tokenizer):
    model = build_bi_encoder(ModelConfig(), tiny_bert)
    with pytest.raises(ConfigError, match=r"max_length=1024: the base model has only 512 positions"):
        evaluate(model, tokenizer, load_dataset(str(tiny_dataset)), EncodeSettings(max_length=1024))


def test_cli_reports_bad_dataset_before_loading_a_model(tmp_path, capsys):
    code = main(["evaluate", "--model", "does-not/exist", "--dataset", str(tmp_path / "nowhere"),
                 "--output", str(tmp_path / "o.json")])
    assert code == 2
    assert "has no corpus.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_unreachable_hub_model_gives_one_clear_error():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = ("from sbmoe_ray.model.backbones import load_backbone\n"
            "load_backbone('no-such-org/no-such-model')")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ModelLoadError: could not load base model 'no-such-org/no-such-model'" in proc.stderr


def test_minilm_resolves_to_the_offline_package_and_derived_bases_keep_first_layers():
    assert os.path.isdir(resolve_model("minilm").source)
    config = ModelConfig(base_model="minilm").resolved()
    assert (config.pooling, config.normalize, config.max_length) == ("mean", True, 256)
    small = load_backbone("minilm-l3")
    assert len(small.encoder.layer) == 3 and small.config.num_hidden_layers == 3
    with pytest.raises(ModelLoadError):
        load_backbone(str(resolve_model("minilm").source) + "-missing")


def test_a_ranking_of_depth_101_scores_as_a_ranking_of_1000(data_dir):
    """Our metrics cut at 100 at most; one more document covers the identical-id rule (CISI's query ids
    collide with its document ids): the shallow ranking gives every per-query value of the deep one."""
    from sbmoe_ray.evaluation.dense import RANKING_DEPTH
    from sbmoe_ray.evaluation.metrics import evaluate_run

    ds = load_dataset("cisi", "test", data_dir=data_dir)
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((len(ds.corpus), 32)).astype("float32")
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    # Each query sits next to the document that shares its id: the rule drops that top hit every time.
    row = {d: i for i, d in enumerate(ds.corpus)}
    queries = np.stack([docs[row[q]] + 0.05 * rng.standard_normal(32).astype("float32") for q in ds.queries])
    assert all(q in row for q in ds.queries)
    runs = {k: exact_search(docs, list(ds.corpus), queries, list(ds.queries), k) for k in (1000, RANKING_DEPTH)}
    assert all(next(iter(ranking)) == q for q, ranking in runs[RANKING_DEPTH].items())
    deep, shallow = (evaluate_run(ds.qrels, runs[k]) for k in (1000, RANKING_DEPTH))
    assert shallow.per_query == deep.per_query


def test_the_ranking_keeps_one_document_more_than_the_deepest_cut_for_the_identical_id_rule():
    """A query's own id ranks first and is dropped; its one relevant document is 101st: it must still count
    for Recall@100 (it is 100th once the query's own document is gone), as in a ranking of depth 1000."""
    from sbmoe_ray.evaluation.dense import RANKING_DEPTH
    from sbmoe_ray.evaluation.metrics import evaluate_run

    doc_ids = ["q"] + [f"d{i}" for i in range(200)]
    docs = np.array([[1000.0]] + [[200.0 - i] for i in range(200)], dtype="float32")
    qrels = {"q": {"d99": 1}}
    recall = {k: evaluate_run(qrels, exact_search(docs, doc_ids, np.ones((1, 1), "float32"), ["q"], k)).means["recall@100"]
              for k in (100, RANKING_DEPTH, 1000)}
    assert recall == {100: 0.0, RANKING_DEPTH: 1.0, 1000: 1.0}
