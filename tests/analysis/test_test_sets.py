"""A test set that shares relevant documents with the zero-shot validation set is reported as validated, not
zero-shot (NFCorpus dev and test, real data); another collection's ids say nothing; without a zero-shot
validation set the roles follow from the names."""

from __future__ import annotations

from dataclasses import replace

from sbmoe_ray.analysis.test_sets import describe_test_sets, relevant_documents, role_line, shared_relevant
from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.train.config import DataConfig


def test_nfcorpus_test_shares_most_relevant_documents_with_its_dev_split_and_is_called_validated(data_dir):
    data = DataConfig(train_dataset="scifact", test_datasets=["scifact", "nfcorpus", "cran"],
                      zero_shot_validation="nfcorpus", zero_shot_validation_split="dev", data_dir=str(data_dir))
    dev, test = (load_dataset("nfcorpus", split, str(data_dir)) for split in ("dev", "test"))
    expected = len(relevant_documents(test) & relevant_documents(dev)) / len(relevant_documents(test))
    roles = describe_test_sets(data)
    assert roles["nfcorpus"] == {"role": "validated", "shared": expected} and expected > 0.5
    assert roles["scifact"]["role"] == "in-domain" and roles["cran"] == {"role": "zero-shot", "shared": 0.0}
    assert shared_relevant(dev, load_dataset("cran", "test", str(data_dir))) == 0.0
    assert "`nfcorpus` validated, not zero-shot" in role_line(roles, "nfcorpus")
    plain = describe_test_sets(replace(data, zero_shot_validation=None))
    assert [r["role"] for r in plain.values()] == ["in-domain", "zero-shot", "zero-shot"]
