"""What each test set is: in-domain, zero-shot, or *validated*, said beside every result on it.

A zero-shot result means the collection took no part in training or choosing. A zero-shot validation set
(``train.data.zero_shot_validation``) chooses configurations (the Pareto front of stage 1); when it is
another split of a test set's collection, the two can share relevant documents: NFCorpus dev shares 93 % of
NFCorpus test's relevant documents, so a configuration chosen on dev has seen, through its choice, most of
what test rewards. Such a test set is reported as "validated (shares N % of its relevant documents with the
zero-shot validation set)", not as zero-shot. (The same split, or shared queries, are refused before the
study starts: :func:`sbmoe_ray.train.checks.check_test_data_never_trains`.)
"""

from __future__ import annotations

from typing import Any

from sbmoe_ray.data.beir import BeirDataset, load_dataset
from sbmoe_ray.data.root import dataset_name
from sbmoe_ray.train.config import DataConfig


def relevant_documents(dataset: BeirDataset) -> set[str]:
    return {doc for judged in dataset.qrels.values() for doc, grade in judged.items() if grade > 0}


def shared_relevant(validation: BeirDataset, test: BeirDataset) -> float:
    """The share of the test split's relevant documents that are relevant in the validation split too
    (0 for another collection: document ids of two collections say nothing about each other)."""
    if validation.path.resolve() != test.path.resolve():
        return 0.0
    mine = relevant_documents(test)
    return len(mine & relevant_documents(validation)) / len(mine) if mine else 0.0


def describe_test_sets(data: DataConfig) -> dict[str, dict[str, Any]]:
    """Per test set (``data.test_datasets``, by the name results give it): ``in-domain`` (the training
    collection), ``validated`` (shares relevant documents with the zero-shot validation set; ``shared``:
    the share) or ``zero-shot``. Data are read only with a zero-shot validation set."""
    if not data.zero_shot_validation:
        return {dataset_name(d): {"role": "in-domain" if dataset_name(d) == dataset_name(data.train_dataset)
                                  else "zero-shot", "shared": 0.0} for d in data.test_datasets}
    validation = load_dataset(data.zero_shot_validation, data.zero_shot_validation_split, data.data_dir)
    train = load_dataset(data.train_dataset, data.train_split, data.data_dir)
    roles = {}
    for name in data.test_datasets:
        test = load_dataset(name, data.test_split, data.data_dir)
        shared = shared_relevant(validation, test)
        role = ("in-domain" if test.path.resolve() == train.path.resolve() else
                "validated" if shared > 0 else "zero-shot")
        roles[dataset_name(name)] = {"role": role, "shared": shared}
    return roles


def role_line(roles: dict[str, dict[str, Any]], validation: str | None) -> str:
    """One sentence naming what each test set is; a validated one says why it is not zero-shot."""
    parts = []
    for name, r in roles.items():
        if r["role"] == "validated":
            parts.append(f"`{name}` validated, not zero-shot: {r['shared']:.0%} of its relevant documents are "
                         f"relevant in the zero-shot validation set `{validation}`, which chose configurations")
        else:
            parts.append(f"`{name}` {r['role']}")
    return "Test sets: " + "; ".join(parts) + "."
