"""Which data a study used, exactly: per dataset its split, a checksum of its files and how many queries
the identical-id rule applies to (what a run records, so that a number can be traced to its data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sbmoe_ray.data.beir import dataset_files, fingerprint_files, identical_id_queries, load_dataset
from sbmoe_ray.data.root import locate_dataset


def dataset_provenance(data: Any) -> dict[str, dict[str, str]]:
    """Per training and test dataset of a ``data`` config section (``train.data``): split, sha256 (16
    hex digits of the files it is read from) and the identical-id rule with the queries it drops for."""
    out = {}
    for name in [data.train_dataset, *data.test_datasets]:
        split = data.train_split if name == data.train_dataset else data.test_split
        path = locate_dataset(name, data.data_dir)
        rule = data.identical_ids.get(Path(name).name, "auto")
        dropped = identical_id_queries(load_dataset(name, split, data.data_dir), rule)
        out[name] = {"split": split, "sha256": fingerprint_files(dataset_files(path, split))[:16],
                     "identical_ids": f"{rule}: {len(dropped)} queries drop their own id"}
    return out


def dataset_uses(data: Any) -> list[dict[str, str]]:
    """Each (dataset, split) a study's runs read, with its role (``train``, ``validation``: the held-out part
    of the training split, ``test``), the sha256 of its files (16 hex digits) and where it lies; plain
    records, so that they travel with a pickled tracker (what MLflow shows as a run's dataset inputs)."""
    uses = [(data.train_dataset, data.train_split, "train"), (data.train_dataset, data.train_split, "validation")]
    uses += [(name, data.test_split, "test") for name in data.test_datasets]
    out = []
    for name, split, context in uses:
        path = locate_dataset(name, data.data_dir)
        out.append({"name": f"{Path(name).name}/{split}" + (" (held out)" if context == "validation" else ""),
                    "digest": fingerprint_files(dataset_files(path, split))[:16], "source": str(path),
                    "split": split, "context": context})
    return out
