"""The identical-id rule, per dataset: a retrieved document whose id is the query's is dropped only where
the query *is* that document (same id and same text), as in ArguAna or Quora; in classic collections
(Cranfield, CISI, ADI...) query and document ids are two numberings that collide, and nothing is dropped."""

from __future__ import annotations

import numpy as np
import pytest

from sbmoe_ray.data.beir import identical_id_queries, load_dataset
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.evaluation.dense import evaluate_pooled
from sbmoe_ray.model.bi_encoder import BiEncoder
from sbmoe_ray.train import TrainConfig

from helpers import write_beir


def collection(tmp_path, queries_are_documents: bool):
    """Three documents "1".."3"; query "1" judges document "1" relevant. Its text is document 1's own
    (a duplicate-question collection) or another text (a classic collection whose numberings collide)."""
    corpus = [{"_id": str(i), "title": "", "text": f"document about subject {i}"} for i in (1, 2, 3)]
    text = "document about subject 1" if queries_are_documents else "which documents discuss subject one?"
    folder = write_beir(tmp_path / ("dup" if queries_are_documents else "classic"), corpus,
                        [{"_id": "1", "text": text}], {"test": [("1", "1", 1), ("1", "2", 1)]})
    return load_dataset(str(folder), "test")


def ndcg(dataset, rule: str) -> tuple[float, dict]:
    docs = np.eye(3, dtype="float32")                    # document i is the unit vector e_i
    query = np.array([[1.0, 0.5, 0.0]], dtype="float32")  # ranks "1" first, then "2"
    result = evaluate_pooled(BiEncoder(None, hidden_size=3), dataset, docs, query, identical_ids=rule)
    return result.metrics.means["ndcg@10"], result.to_dict()["identical_ids"]


def test_a_classic_collection_keeps_the_document_that_shares_the_query_number(tmp_path):
    dataset = collection(tmp_path, queries_are_documents=False)
    assert identical_id_queries(dataset) == set()
    score, stored = ndcg(dataset, "auto")
    assert score == pytest.approx(1.0) and stored == {"rule": "auto", "queries": 0}
    assert ndcg(dataset, "drop")[0] < 1.0                  # BEIR's blanket rule would lose the hit


def test_queries_that_are_corpus_documents_do_not_retrieve_themselves(tmp_path):
    dataset = collection(tmp_path, queries_are_documents=True)
    assert identical_id_queries(dataset) == {"1"}
    assert ndcg(dataset, "auto") == ndcg(dataset, "drop")[:1] + ({"rule": "auto", "queries": 1},)
    assert ndcg(dataset, "keep")[0] == pytest.approx(1.0)


def test_the_real_classic_collections_drop_nothing(data_dir):
    for name in ("cran", "cisi", "adi"):
        dataset = load_dataset(name, "test", data_dir=data_dir)
        assert all(q in dataset.corpus for q in dataset.queries)       # every query number is a document's
        assert identical_id_queries(dataset) == set()


def test_a_bad_rule_is_refused_with_its_key():
    config = TrainConfig()
    config.data.identical_ids = {"cran": "sometimes"}
    with pytest.raises(ConfigError, match=r"config\.data\.identical_ids=\{'cran': 'sometimes'\}: a mapping"):
        config.validate()
