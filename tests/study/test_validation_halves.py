"""A two-stage study promotes on one half of the held-out queries and ranks stage 2 on the other: the halves
share no query, together they are the held-out split, and both stages train on the same pairs."""

from __future__ import annotations

from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.train.inputs import split_pairs

from helpers import synthetic_dataset


def test_promotion_and_stage_two_validation_share_no_query(tmp_path):
    data = synthetic_dataset(tmp_path / "data", 80)
    study = StudyConfig.from_dict({"name": "halves", "storage_path": str(tmp_path / "s"), "promote": 1,
                                   "train": {"data": {"train_dataset": str(data), "test_datasets": [str(data)],
                                                      "validation_fraction": 0.25}}})
    dataset = load_dataset(str(data), "train")
    train1, promotion = split_pairs(study.proxy_stage().train, dataset)
    train2, selection = split_pairs(study.finetune_stage().train, dataset)
    _, held_out = split_pairs(study.train, dataset)
    queries = [{q for q, _ in pairs} for pairs in (promotion, selection, held_out)]
    assert queries[0] and queries[1] and not queries[0] & queries[1]
    assert queries[0] | queries[1] == queries[2] and abs(len(queries[0]) - len(queries[1])) <= 1
    assert train1 == train2 and sorted(promotion + selection) == sorted(held_out)
    stage_one_only = StudyConfig.from_dict({**study.to_dict(), "promote": 0})
    assert split_pairs(stage_one_only.proxy_stage().train, dataset)[1] == held_out    # no stage 2: all of them
