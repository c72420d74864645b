"""BEIR data layer: validation errors name file and line; CRLF; score 0; splits; the real shared data."""

from __future__ import annotations

import json

import pytest

from sbmoe_ray.data import root
from sbmoe_ray.data.beir import load_dataset, training_pairs
from sbmoe_ray.data.splits import split_by_query
from sbmoe_ray.errors import DataError

from helpers import write_beir

CORPUS = [{"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "text": "two"}]
QUERIES = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}]


def test_crlf_qrels_are_read_with_correct_scores(tmp_path):
    folder = write_beir(tmp_path / "crlf", CORPUS, QUERIES, {"test": [("q1", "d1", 2), ("q2", "d2", 1)]},
                        line_end="\r\n")
    assert b"\r\n" in (folder / "qrels" / "test.tsv").read_bytes()
    ds = load_dataset(str(folder), "test")
    assert ds.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}
    assert ds.corpus["d1"].full_text == "T one" and ds.corpus["d2"].full_text == "two"


def test_score_zero_is_judged_not_relevant(tiny_dataset):
    train = load_dataset(str(tiny_dataset), "train")
    assert train.qrels["q0"]["d5"] == 0                        # kept for evaluation
    assert ("q0", "d5") not in training_pairs(train.qrels)     # never a positive
    assert training_pairs(train.qrels) == [("q0", "d0"), ("q1", "d1"), ("q2", "d2"), ("q3", "d3")]


def test_only_judged_queries_are_evaluated(tiny_dataset):
    test = load_dataset(str(tiny_dataset), "test")
    assert sorted(test.queries) == ["q4", "q5"]


def test_malformed_json_names_file_and_line(tmp_path):
    folder = write_beir(tmp_path / "bad", CORPUS, QUERIES, {"test": [("q1", "d1", 1)]})
    with open(folder / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d3", "text": "unterminated\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: malformed JSON"):
        load_dataset(str(folder), "test")


@pytest.mark.parametrize("line,message", [
    ('["not", "an", "object"]', r"queries\.jsonl:3: expected a JSON object with an '_id'"),
    ('{"_id": "q1", "text": "again"}', r"queries\.jsonl:3: duplicate query id 'q1' \(first seen on line 1\)"),
    ('{"_id": "q9", "text": 7}', r"queries\.jsonl:3: field 'text' must be a string, got int"),
])
def test_bad_records_name_file_and_line(tmp_path, line, message):
    folder = write_beir(tmp_path / "bad", CORPUS, QUERIES, {"test": [("q1", "d1", 1)]})
    with open(folder / "queries.jsonl", "a") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match=message):
        load_dataset(str(folder), "test")


@pytest.mark.parametrize("content,message", [
    ("qid\tdid\trel\nq1\td1\t1\n", r"test\.tsv:1: expected the header"),
    ("query-id\tcorpus-id\tscore\nq1\td1\n", r"test\.tsv:2: expected 3 tab-separated fields"),
    ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test\.tsv:2: score must be an integer, got 'high'"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n", r"test\.tsv:3: duplicate judgement .* line 2"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq7\td8\t1\nq1\td9\t1\n",
     r"2 corpus ids not in corpus\.jsonl \(e\.g\. \['d8', 'd9'\]\)"),
])
def test_bad_qrels_are_reported(tmp_path, content, message):
    folder = write_beir(tmp_path / "bad", CORPUS, QUERIES, {})
    (folder / "qrels" / "test.tsv").write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(str(folder), "test")


def test_unknown_query_ids_are_counted(tmp_path):
    folder = write_beir(tmp_path / "bad", CORPUS, QUERIES, {"test": [("q1", "d1", 1), ("qx", "d1", 1)]})
    with pytest.raises(DataError, match=r"1 query ids not in queries\.jsonl \(e\.g\. \['qx'\]\)"):
        load_dataset(str(folder), "test")


def test_missing_split_lists_the_available_ones(tiny_dataset):
    with pytest.raises(DataError, match=r"no split 'dev'.*available splits: \['test', 'train'\]"):
        load_dataset(str(tiny_dataset), "dev")


def test_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(root, "BEIR_URL", "http://127.0.0.1:9/{name}.zip")   # nothing listens there
    with pytest.raises(DataError) as info:
        load_dataset("no-such-set", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "no-such-set") in message and "could not download" in message
    assert "SBMOE_DATA_DIR" in message and "--data-dir" in message


def test_data_root_setting_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SBMOE_DATA_DIR", str(tmp_path / "env"))
    assert root.data_root() == tmp_path / "env"
    assert root.data_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("SBMOE_DATA_DIR")
    assert root.data_root() == root.DEFAULT_DATA_DIR


def test_validation_split_is_deterministic_and_keeps_queries_whole():
    pairs = [(f"q{i}", f"d{j}") for i in range(20) for j in range(i % 3 + 1)]
    train, validation = split_by_query(pairs, 0.25, seed=7)
    assert (train, validation) == split_by_query(pairs, 0.25, seed=7)
    assert split_by_query(pairs, 0.25, seed=8) != (train, validation)
    assert {q for q, _ in train}.isdisjoint({q for q, _ in validation})
    assert len({q for q, _ in validation}) == 5 and len(train) + len(validation) == len(pairs)
    with pytest.raises(DataError, match=r"validation_fraction=1\.5: allowed range is \[0, 1\)"):
        split_by_query(pairs, 1.5, seed=0)


def test_real_scifact_from_the_data_root(data_dir):
    test = load_dataset("scifact", "test", data_dir=data_dir)
    train = load_dataset("scifact", "train", data_dir=data_dir)
    assert (len(test.corpus), len(test.queries), sum(map(len, test.qrels.values()))) == (5183, 300, 339)
    assert len(training_pairs(train.qrels)) == 919
    assert len(test.fingerprint()) == 64 and test.fingerprint() != train.fingerprint()
    first = json.loads((data_dir / "scifact" / "corpus.jsonl").open().readline())
    assert test.corpus[first["_id"]].title == first["title"]


@pytest.mark.parametrize("value,message", [("", r"\$SBMOE_DATA_DIR='': empty"),
                                           ("FILE", r"\$SBMOE_DATA_DIR='.*': a file, not a folder")])
def test_a_data_root_that_is_empty_or_a_file_is_refused_not_replaced_by_a_download(tmp_path, monkeypatch, value,
                                                                                  message):
    from sbmoe_ray.data.root import data_root
    from sbmoe_ray.errors import DataError

    if value == "FILE":
        value = str(tmp_path / "file")
        (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SBMOE_DATA_DIR", value)
    with pytest.raises(DataError, match=message):
        data_root()
