"""BEIR datasets: read with validation (located by :mod:`sbmoe_ray.data.root`), and training pairs derived.

Layout (https://github.com/beir-cellar/beir): ``<name>/corpus.jsonl``, ``<name>/queries.jsonl`` and
``<name>/qrels/<split>.tsv`` with a ``query-id<TAB>corpus-id<TAB>score`` header. Everything is checked
before use, and every problem is reported as one :class:`~sbmoe_ray.errors.DataError` that names the
file and line. Semantics follow BEIR's ``GenericDataLoader``: documents are encoded as
``(title + " " + text).strip()``, only the queries judged in the split's qrels are evaluated, and a
qrels score of 0 means *judged not relevant* (kept for evaluation, never used as a training positive).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from sbmoe_ray.data.root import locate_dataset
from sbmoe_ray.errors import DataError

QRELS_HEADER = ("query-id", "corpus-id", "score")
_MAX_EXAMPLES = 5

Qrels = dict[str, dict[str, int]]


class Document(NamedTuple):
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """The string BEIR encodes for a document."""
        return (self.title + " " + self.text).strip()


@dataclass
class BeirDataset:
    """One split of a BEIR dataset, validated. ``queries`` holds only the queries judged in ``qrels``."""

    name: str
    path: Path
    split: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: Qrels

    def fingerprint(self) -> str:
        """SHA-256 over the files this split is read from (content-addressed caches, run metadata)."""
        return fingerprint_files(dataset_files(self.path, self.split))

    def queries_in_corpus(self) -> set[str]:
        """Queries that are corpus documents: the same id *and* the same text (ArguAna, Quora, CQADupStack).

        BEIR drops a retrieved document whose id equals the query id for such collections. In classic
        collections (Cranfield, CISI, Medline, ADI, NPL) query and document ids are two numberings that
        collide, and a query may judge its same-numbered document relevant: nothing is dropped there.
        """
        return {q for q, text in self.queries.items() if q in self.corpus and same_text(text, self.corpus[q])}


IDENTICAL_ID_RULES = ("auto", "drop", "keep")


def identical_id_queries(dataset: BeirDataset, rule: str = "auto") -> set[str]:
    """The queries whose same-id document is removed from their ranking: decided from the data
    (``auto``: :meth:`BeirDataset.queries_in_corpus`), or every query (``drop``, BEIR's
    ``ignore_identical_ids=True``), or none (``keep``)."""
    if rule not in IDENTICAL_ID_RULES:
        raise DataError(f"identical_ids[{dataset.name!r}]={rule!r}: allowed values are {IDENTICAL_ID_RULES}")
    if rule == "auto":
        return dataset.queries_in_corpus()
    return set(dataset.queries) if rule == "drop" else set()


def same_text(query: str, document: Document) -> bool:
    def norm(text: str) -> str:
        return " ".join(text.lower().split())
    return norm(query) in {norm(document.text), norm(document.full_text), norm(document.title)} - {""}


def dataset_files(path: Path, split: str) -> list[Path]:
    return [path / "corpus.jsonl", path / "queries.jsonl", path / "qrels" / f"{split}.tsv"]


def available_splits(path: Path) -> list[str]:
    return sorted(p.stem for p in (path / "qrels").glob("*.tsv"))


def fingerprint_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def text_lines(path: Path):
    """``(line number, text)`` of a UTF-8 file (LF or CRLF line ends); a byte that is not UTF-8 is one
    :class:`DataError` naming the file, the line and the column."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte = raw[exc.start:exc.start + 1]
                raise DataError(f"{path}:{lineno}: not UTF-8 (byte {byte!r} at column {exc.start + 1}); re-encode "
                                "the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            yield lineno, text.removesuffix("\n").removesuffix("\r") + "\n"


def _read_jsonl(path: Path, what: str) -> dict[str, dict]:
    """Read a BEIR jsonl file into ``{_id: record}``; malformed lines and duplicate ids are errors."""
    if not path.is_file():
        raise DataError(f"{path}: missing {what} file")
    records: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict) or "_id" not in record:
            raise DataError(f"{path}:{lineno}: expected a JSON object with an '_id' field")
        record_id = str(record["_id"])
        if record_id in records:
            raise DataError(f"{path}:{lineno}: duplicate {what} id {record_id!r} "
                            f"(first seen on line {first_line[record_id]})")
        for field in ("title", "text"):
            if record.get(field) is not None and not isinstance(record[field], str):
                raise DataError(f"{path}:{lineno}: field {field!r} must be a string, "
                                f"got {type(record[field]).__name__}")
        records[record_id] = record
        first_line[record_id] = lineno
    return records


def read_corpus(path: Path) -> dict[str, Document]:
    return {i: Document(r.get("title") or "", r.get("text") or "") for i, r in _read_jsonl(path, "document").items()}


def read_queries(path: Path) -> dict[str, str]:
    return {i: r.get("text") or "" for i, r in _read_jsonl(path, "query").items()}


def read_qrels(path: Path) -> Qrels:
    """Read a qrels TSV (LF or CRLF line ends); a repeated (query, document) pair is an error."""
    if not path.is_file():
        raise DataError(f"{path}: missing qrels file")
    qrels: Qrels = {}
    first_line: dict[tuple[str, str], int] = {}
    # text_lines turns CRLF into LF, so the score column never carries a "\r".
    for lineno, line in text_lines(path):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if lineno == 1:
            if tuple(fields) != QRELS_HEADER:
                raise DataError(f"{path}:1: expected the header {'<TAB>'.join(QRELS_HEADER)!r}, "
                                f"got {line!r}")
            continue
        if len(fields) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields "
                            f"(query-id, corpus-id, score), got {len(fields)}: {line!r}")
        query_id, doc_id, score_text = fields
        try:
            score = int(score_text)
        except ValueError:
            raise DataError(f"{path}:{lineno}: score must be an integer, got {score_text!r}") from None
        if (query_id, doc_id) in first_line:
            raise DataError(f"{path}:{lineno}: duplicate judgement for query {query_id!r} and document "
                            f"{doc_id!r} (first on line {first_line[query_id, doc_id]})")
        first_line[query_id, doc_id] = lineno
        qrels.setdefault(query_id, {})[doc_id] = score
    if not qrels:
        raise DataError(f"{path}: no judgements")
    return qrels


def _check_ids(qrels_path: Path, qrels: Qrels, queries: dict, corpus: dict) -> None:
    unknown_queries = sorted(q for q in qrels if q not in queries)
    unknown_docs = sorted({d for rels in qrels.values() for d in rels if d not in corpus})
    problems = []
    if unknown_queries:
        problems.append(f"{len(unknown_queries)} query ids not in queries.jsonl "
                        f"(e.g. {unknown_queries[:_MAX_EXAMPLES]})")
    if unknown_docs:
        problems.append(f"{len(unknown_docs)} corpus ids not in corpus.jsonl (e.g. {unknown_docs[:_MAX_EXAMPLES]})")
    if problems:
        raise DataError(f"{qrels_path}: qrels name unknown ids: " + "; ".join(problems))


def load_dataset(name_or_path: str, split: str = "test", data_dir: str | os.PathLike | None = None,
                 download: bool = True) -> BeirDataset:
    """Locate, read and validate one split of a BEIR dataset (read once per process while its files stay
    the same; callers treat it as read-only)."""
    path = locate_dataset(name_or_path, data_dir, download=download)
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in dataset_files(path, split) if f.is_file())
    return _read_split(path, split, stamp, name_or_path)


@lru_cache(maxsize=16)
def _read_split(path: Path, split: str, stamp: tuple, name_or_path: str) -> BeirDataset:
    qrels_path = path / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise DataError(f"dataset {name_or_path!r} has no split {split!r} ({qrels_path} is missing); "
                        f"available splits: {available_splits(path) or 'none'}")
    corpus = read_corpus(path / "corpus.jsonl")
    if not corpus:
        raise DataError(f"{path / 'corpus.jsonl'}: no documents (the corpus is empty); a BEIR corpus has one JSON "
                        "object a line with '_id', 'title' and 'text'")
    all_queries = read_queries(path / "queries.jsonl")
    qrels = read_qrels(qrels_path)
    _check_ids(qrels_path, qrels, all_queries, corpus)
    queries = {qid: all_queries[qid] for qid in qrels}
    empty = sorted(q for q, text in queries.items() if not text.strip())
    if empty:
        raise DataError(f"{path / 'queries.jsonl'}: {len(empty)} query(ies) judged in {qrels_path.name} have no text "
                        f"(e.g. {empty[:_MAX_EXAMPLES]}); give them their text or remove their judgements")
    return BeirDataset(name=path.name, path=path, split=split, corpus=corpus, queries=queries, qrels=qrels)


def training_pairs(qrels: Qrels) -> list[tuple[str, str]]:
    """(query id, positive document id) for every judgement with score > 0, in a stable order."""
    return [(qid, did) for qid in sorted(qrels) for did in sorted(qrels[qid]) if qrels[qid][did] > 0]
