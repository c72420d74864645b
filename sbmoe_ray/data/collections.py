"""The paper's zero-shot collections by name, and test topics read without their corpus.

SB-MoE (Sokli et al., 2025; arXiv 2510.15683) fine-tunes on MS MARCO and tests zero-shot on 13 BEIR
collections, several of 2-5M documents. A study names them in ``data.large_test_datasets`` (each by its
BEIR name, or ``beir-13`` for all of them); they are downloaded from the BEIR mirror into the data root
when absent (:func:`sbmoe_ray.data.root.locate_dataset`) and tested only for the configurations that reach the
end of a study (stage 2's chosen configuration and baseline), smallest first, so the search stays cheap.

A corpus of millions of documents is never read into the driver: :func:`load_topics` reads the queries and
qrels of a split, and of the corpus only the documents whose ids are query ids (what the identical-id rule
needs); the corpus file itself is read shard by shard by the encoding workers
(:mod:`sbmoe_ray.evaluation.sharded.encode`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sbmoe_ray.data.beir import Document, Qrels, read_qrels, read_queries, same_text
from sbmoe_ray.data.root import locate_dataset
from sbmoe_ray.errors import DataError

# BEIR name -> corpus size (documents), from the BEIR paper's Table 1; the order of the 13 is by size.
BEIR_13 = {
    "scifact": 5_183, "nfcorpus": 3_633, "arguana": 8_674, "scidocs": 25_657, "fiqa": 57_638,
    "trec-covid": 171_332, "webis-touche2020": 382_545, "quora": 522_931, "nq": 2_681_468,
    "dbpedia-entity": 4_635_922, "hotpotqa": 5_233_329, "fever": 5_416_568, "climate-fever": 5_416_593,
}
# Test queries of each (BEIR paper, Table 1), and MS MARCO (the paper's training set: 8.8M passages, dev).
BEIR_13_QUERIES = {
    "scifact": 300, "nfcorpus": 323, "arguana": 1_406, "scidocs": 1_000, "fiqa": 648, "trec-covid": 50,
    "webis-touche2020": 49, "quora": 10_000, "nq": 3_452, "dbpedia-entity": 400, "hotpotqa": 7_405,
    "fever": 6_666, "climate-fever": 1_535,
}
MSMARCO = {"documents": 8_841_823, "queries": 6_980}
BEIR_13_ALIAS = "beir-13"
# The split each is tested on (BEIR's own choice: dev for MS MARCO, test elsewhere).
TEST_SPLIT = {"msmarco": "dev"}


def expand_names(names: list[str]) -> list[str]:
    """``beir-13`` expanded to the 13 names; the rest kept; duplicates dropped; smallest known first."""
    out = {n for name in names for n in (BEIR_13 if name == BEIR_13_ALIAS else [name])}
    return sorted(out, key=lambda n: (BEIR_13.get(n, 0), n))


@dataclass
class BeirTopics:
    """One split's judged queries and qrels; its corpus file (``path / "corpus.jsonl"``) is not read."""

    name: str
    path: Path
    split: str
    queries: dict[str, str]
    qrels: Qrels
    same_id_documents: dict[str, Document]    # corpus documents whose id is a query id

    def queries_in_corpus(self) -> set[str]:
        """As :meth:`sbmoe_ray.data.beir.BeirDataset.queries_in_corpus`: same id *and* same text."""
        docs = self.same_id_documents
        return {q for q, text in self.queries.items() if q in docs and same_text(text, docs[q])}


def load_topics(name_or_path: str, split: str | None = None, data_dir: str | os.PathLike | None = None
                ) -> BeirTopics:
    """Queries and qrels of ``split`` (default: the collection's test split), the corpus left on disk."""
    path = locate_dataset(name_or_path, data_dir)
    split = split or TEST_SPLIT.get(path.name, "test")
    qrels_path = path / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise DataError(f"large_test_datasets: {name_or_path!r} has no split {split!r} ({qrels_path} is missing)")
    qrels = read_qrels(qrels_path)
    all_queries = read_queries(path / "queries.jsonl")
    unknown = sorted(set(qrels) - set(all_queries))
    if unknown:
        raise DataError(f"{qrels_path}: qrels name {len(unknown)} query ids not in queries.jsonl (e.g. {unknown[:3]})")
    queries = {q: all_queries[q] for q in qrels}
    return BeirTopics(path.name, path, split, queries, qrels, _documents_with_ids(path / "corpus.jsonl", set(queries)))


def _documents_with_ids(corpus_file: Path, ids: set[str]) -> dict[str, Document]:
    """The corpus documents whose ids are in ``ids``, read line by line (the corpus is never held)."""
    found: dict[str, Document] = {}
    with open(corpus_file, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip() or not _id_in(line, ids):
                continue
            record = json.loads(line)
            if str(record["_id"]) in ids:
                found[str(record["_id"])] = Document(record.get("title") or "", record.get("text") or "")
    return found


def _id_in(line: str, ids: set[str]) -> bool:
    """A cheap pre-check before parsing: the line's ``_id`` value (when it comes first) is in ``ids``."""
    start = line.find('"_id"')
    if start < 0:
        return True                 # unusual layout: parse it
    value = line[start + 5:].lstrip(" :")
    if value.startswith('"'):
        return value[1:value.find('"', 1)] in ids
    return True
