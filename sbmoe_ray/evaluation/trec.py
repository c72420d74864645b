"""TREC run files: the ranking a model was scored on, in the format every IR tool reads.

``qid Q0 docid rank score tag``, one line per retrieved document, ``RUN_DEPTH`` documents per query, in
trec_eval's order (score descending, ties by document id descending), after the dataset's identical-id rule
(:func:`sbmoe_ray.evaluation.metrics.drop_identical`). trec_eval, ranx, ir_measures and pytrec_eval read it;
scoring the file against the qrels reproduces the toolkit's nDCG@10 and Recall@100 (a test holds it to
1e-4). Scores are float32 inner products, written with 9 significant digits (exact for float32), so that
no two documents tie in the file that did not tie in the search.
"""

from __future__ import annotations

from pathlib import Path

from sbmoe_ray.evaluation.metrics import Run, ranked

RUN_DEPTH = 100      # the deepest cut of the metrics (Recall@100, MAP@100)


def write_trec(run: Run, path: Path, tag: str, depth: int = RUN_DEPTH) -> Path:
    """Write ``run`` (query id -> {doc id: score}) as a TREC run file, top ``depth`` per query."""
    tag = "_".join(tag.split()) or "sbmoe"
    lines = [f"{qid} Q0 {did} {rank} {score:.9g} {tag}" for qid, docs in ranked(run, depth).items()
             for rank, (did, score) in enumerate(docs.items(), 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def read_trec(path: Path) -> Run:
    """A TREC run file as query id -> {doc id: score}."""
    run: Run = {}
    for line in Path(path).read_text().splitlines():
        qid, _, did, _, score, _ = line.split()
        run.setdefault(qid, {})[did] = float(score)
    return run
