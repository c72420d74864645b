"""Routing recorded at test time: each document's top-1 expert is the gate's argmax, and co-routing of a
query with its relevant documents equals a direct count over the qrels, with its chance level."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.evaluation.dense import EncodeSettings, evaluate
from sbmoe_ray.evaluation.routing import routing_summary
from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder


def test_co_routing_counts_every_relevant_pair_and_its_chance_level():
    qrels = {"q1": {"d1": 1, "d2": 2, "d3": 0}, "q2": {"d3": 1, "dx": 1}}
    doc_top1, query_top1 = np.array([0, 1, 0]), np.array([0, 0])
    out = routing_summary(qrels, ["d1", "d2", "d3"], doc_top1, ["q1", "q2"], query_top1, num_experts=2)
    # relevant pairs with both sides encoded: (q1,d1) same, (q1,d2) not, (q2,d3) same; d3 for q1 is rel 0, dx unknown
    assert out["pairs"] == 3 and out["same_expert"] == pytest.approx(2 / 3)
    # query marginal over the pairs: expert 0 always; document marginal: 2/3 on expert 0
    assert out["chance"] == pytest.approx(1.0 * 2 / 3)
    assert out["doc_top1"] == [0, 1, 0] and out["query_top1"] == {"q1": 0, "q2": 0}


def test_an_evaluation_records_the_gates_argmax_for_every_document_and_query(tiny_bert, tokenizer, data_dir):
    dataset = load_dataset("adi", "test", data_dir=data_dir)
    torch.manual_seed(0)
    model = build_bi_encoder(ModelConfig(num_experts=4, top_k=2, pooling="mean", normalize=True), tiny_bert).eval()
    result = evaluate(model, tokenizer, dataset, EncodeSettings(batch_size=7, progress=False))
    routing = result.to_dict()["routing"]
    docs = list(dataset.corpus.values())
    batch = tokenizer([d.full_text for d in docs[:5]], truncation=True, max_length=256, padding=True,
                      return_tensors="pt")
    with torch.inference_mode():
        pooled = model.pool(batch["input_ids"], batch["attention_mask"])
        expected = model.head.route(pooled).probs.argmax(dim=-1).tolist()
    assert routing["doc_top1"][:5] == expected and len(routing["doc_top1"]) == len(docs)
    assert set(routing["query_top1"]) == set(dataset.queries) and min(routing["doc_top1"]) >= 0
    assert 0 <= routing["chance"] <= 1 and routing["pairs"] > 0
    assert "doc_top1" not in result.to_dict(per_query=False)["routing"]     # Tune's reports stay small
