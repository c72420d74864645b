"""Testing on large collections: the sharded evaluation (W = 2 encoding workers, search shard by shard)
gives the single-process path's metrics on a real collection; an approximate index reports its recall
against exact search; topics read without their corpus apply the same identical-id rule; the BEIR-13 names
and the config rules of large test sets."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sbmoe_ray.config import load_config
from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.data.collections import BEIR_13, expand_names, load_topics
from sbmoe_ray.data.root import data_root
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.evaluation.config import EvaluationConfig
from sbmoe_ray.evaluation.dense import evaluate
from sbmoe_ray.evaluation.metrics import final_metrics, metric_key
from sbmoe_ray.evaluation.sharded.evaluate import ShardedEvaluation
from sbmoe_ray.evaluation.sharded.search import ShardedCorpus, write_shards
from sbmoe_ray.model.backbones import load_tokenizer
from sbmoe_ray.study.config import StudyConfig

from helpers import REPO, write_beir
from test_sharded_encode import DATA, evaluation_for, local_ray, model_folder  # noqa: F401 (fixtures)

STUDY = REPO / "sbmoe_ray" / "presets" / "experts_sweep.yaml"


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sharded-eval")


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "cran").is_dir(), reason="needs ../shared/data/beir/cran")
def test_sharded_evaluation_of_cranfield_with_two_workers_equals_the_single_process_evaluation(model_folder,
                                                                                                shard_root):
    live = evaluation_for(model_folder)
    dataset = load_dataset("cran", "test", data_root(str(DATA)))
    single = evaluate(live.load(None), load_tokenizer(str(model_folder)), dataset, live.settings)
    options = EvaluationConfig(sharded=True, shard_rows=300, search_memory_mb=4)
    (sharded,) = ShardedEvaluation(live, options, str(shard_root), workers=2)(None, [dataset])
    assert sharded.search == {"index": "exact (sharded)", "memory_mb": 4, "documents": 1400, "shards": 5}
    assert sharded.metrics.num_queries == single.metrics.num_queries == 225
    assert sharded.metrics.means == pytest.approx(single.metrics.means, abs=1e-4)
    assert sharded.identical_ids == single.identical_ids
    # The topics path (queries and qrels only; the corpus never read into this process) gives the same.
    (topics,) = ShardedEvaluation(live, options, str(shard_root), workers=2)(None, [load_topics(str(DATA / "cran"))])
    assert topics.metrics.means == sharded.metrics.means


@pytest.mark.skipif(not (DATA / "cran").is_dir(), reason="needs ../shared/data/beir/cran")
def test_an_approximate_index_reports_its_recall_at_100_against_exact_search(model_folder, shard_root):
    live = evaluation_for(model_folder)
    exact, hnsw = (ShardedEvaluation(live, EvaluationConfig(sharded=True, shard_rows=300, index=kind,
                                                            recall_queries=50), str(shard_root), workers=2)
                   (None, [load_topics(str(DATA / "cran"))])[0] for kind in ("flat", "hnsw"))
    assert hnsw.search["index"] == "hnsw" and hnsw.search["recall_queries"] == 50
    assert 0 < hnsw.search["recall@100"] <= 1.0
    assert final_metrics([hnsw.to_dict()])[metric_key("cran", "search_recall@100")] == hnsw.search["recall@100"]
    assert metric_key("cran", "search_recall@100") not in final_metrics([exact.to_dict()])
    assert hnsw.metrics.means["ndcg@10"] == pytest.approx(exact.metrics.means["ndcg@10"], abs=0.05)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_the_reported_recall_is_the_overlap_with_faiss_exact_search(tmp_path, kind):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 32))
    vectors = (centres[rng.integers(0, 40, 6000)] + 0.3 * rng.normal(size=(6000, 32))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(6000, 30, replace=False)] + 0.05 * rng.normal(size=(30, 32)).astype(np.float32)
    corpus = ShardedCorpus(write_shards(tmp_path / "v", [f"d{i}" for i in range(6000)], vectors, 1000))
    evaluation = ShardedEvaluation(None, EvaluationConfig(index=kind, recall_queries=30), str(tmp_path), workers=1)
    scores, rows, search = evaluation.search(corpus, queries)
    flat = faiss.IndexFlatIP(32)
    flat.add(vectors)
    _, exact = flat.search(np.ascontiguousarray(queries, dtype=np.float32), 100)
    overlap = np.mean([len(set(a[:100]) & set(e)) / 100 for a, e in zip(rows.tolist(), exact.tolist())])
    assert search["index"] == kind and search["recall_queries"] == 30
    assert search["recall@100"] == pytest.approx(overlap, abs=1e-9) and search["recall@100"] > 0.5
    assert rows.shape == (30, 101) and np.all(np.diff(scores, axis=1)[rows[:, 1:] >= 0] <= 1e-6)


def test_topics_read_without_the_corpus_apply_the_same_identical_id_rule(tmp_path):
    corpus = [{"_id": "a", "title": "", "text": "what is a cat"}, {"_id": "b", "title": "", "text": "dogs"},
              {"_id": "c", "title": "x", "text": "y"}]
    queries = [{"_id": "a", "text": "What is a cat"}, {"_id": "b", "text": "another text"},
               {"_id": "q", "text": "free"}]
    folder = write_beir(tmp_path / "dup", corpus, queries, {"test": [("a", "c", 1), ("b", "c", 1), ("q", "a", 1)]})
    topics, full = load_topics(str(folder)), load_dataset(str(folder), "test")
    assert topics.queries == full.queries and topics.qrels == full.qrels
    assert topics.queries_in_corpus() == full.queries_in_corpus() == {"a"}
    assert set(topics.same_id_documents) == {"a", "b"}          # only documents whose id is a query id


def test_beir_13_expands_to_the_papers_collections_smallest_first():
    names = expand_names(["fever", "beir-13", "cran"])
    assert len(names) == 14 and set(names) == set(BEIR_13) | {"cran"}
    sizes = [BEIR_13.get(n, 0) for n in names]
    assert sizes == sorted(sizes) and names[-2:] == ["fever", "climate-fever"]


def test_large_test_sets_need_stage_two_and_must_not_repeat_a_test_set():
    with pytest.raises(ConfigError, match=r"train\.data\.large_test_datasets=\['nq'\]: tested at the end of "
                                          r"stage 2 only .* set promote >= 1"):
        load_config(StudyConfig, STUDY, ["promote=0", "train.data.large_test_datasets=[nq]"])
    with pytest.raises(ConfigError, match=r"large_test_datasets=\['scifact'\]: \['scifact'\] also in data\.test_datasets"):
        load_config(StudyConfig, STUDY, ["train.data.large_test_datasets=[scifact]"])


def test_a_collection_named_but_absent_is_downloaded_once_into_the_data_root(tmp_path, monkeypatch):
    import functools
    import http.server
    import shutil
    import threading

    import sbmoe_ray.data.root

    source = write_beir(tmp_path / "site" / "tiny", [{"_id": "d", "title": "", "text": "t"}],
                        [{"_id": "q", "text": "t"}], {"test": [("q", "d", 1)]})
    shutil.make_archive(str(tmp_path / "site" / "tiny"), "zip", tmp_path / "site", "tiny")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(sbmoe_ray.data.root, "BEIR_URL", f"http://127.0.0.1:{server.server_address[1]}/{{name}}.zip")
    try:
        topics = load_topics("tiny", None, tmp_path / "root")
        assert topics.path == tmp_path / "root" / "tiny" and topics.qrels == {"q": {"d": 1}}
        assert (topics.path / "corpus.jsonl").read_text() == (source / "corpus.jsonl").read_text()
        server.shutdown()                                   # found on disk from now on
        assert load_topics("tiny", None, tmp_path / "root").queries == {"q": "t"}
    finally:
        server.server_close()
