"""A study's config: every bad input answers with one message naming the key (and file:line) before Ray or
any expensive work starts; the presets load; machine policy is the preset's, never a library default."""

from __future__ import annotations

import json

import pytest
import ray

from sbmoe_ray.cli import main
from sbmoe_ray.config import load_config
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.study.stage import FinetuneConfig

from helpers import REPO, save_tiny_model, synthetic_dataset, write_study

PRESETS = REPO / "sbmoe_ray" / "presets"


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("config")
    return {"model": save_tiny_model(root / "model", tokenizer), "data": synthetic_dataset(root / "data", 88)}


CASES = {
    "top_k": ({"space.top_k": 3}, "top_k=3: larger than num_experts=2"),
    "lr": ({"space.moe_lr": [1e-2, 1e-4]}, "moe_lr=[0.01, 0.0001]: expected [low, high]"),
    "lr0": ({"space.moe_lr": [0.0, 1e-2]}, "moe_lr=[0.0, 0.01]: expected [low, high] with 0 < low"),
    "parameter": ({"space.experts": [1]}, "config.space.experts=[1]: unknown search parameter"),
    "dataset": ({"train.data.test_datasets": ["/nonexistent/no-such-set"]}, "has no corpus.jsonl"),
    "key": ({"proxy.num_trial": 4}, "config.proxy.num_trial=4: unknown key; allowed keys are"),
    "moved": ({"num_trials": 4}, "config.num_trials=4: this key moved to config.proxy.num_trials"),
    "section": ({"search.num_trials": 4}, "config.search.num_trials=4: this key moved to config.proxy.num_trials"),
    "type": ({"proxy.num_trials": "many"}, "config.proxy.num_trials='many': expected int"),
    "model": ({"space.base_model": ["no-such-org/no-such-model"]}, "could not load base model"),
    "split": ({"train.data.train_split": "dev"}, "no split 'dev'"),
    "tracking": ({"tracking_uri": "http://127.0.0.1:9"}, "MLflow server is unreachable"),
    "storage": ({"storage_path": "/proc/forbidden"}, "not writable"),
    "zero-shot": ({"train.data.zero_shot_validation": "/nonexistent/other"}, "has no corpus.jsonl"),
    "seeds": ({"proxy.seeds": 0}, "config.proxy.seeds=0: must be a positive integer"),
    "asha": ({"proxy.seeds": 2, "proxy.asha": True}, "config.proxy.asha=True: not with proxy.seeds=2"),
    "auto": ({"finetune.seeds": "auto"}, "finetune.seeds='auto': 'auto' was the quick start's machine policy"),
    "policy": ({"budget_minutes": {"native_bf16": 45}}, "needs exactly the keys ['native_bf16', 'otherwise']"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_study_input_stops_before_ray_with_one_message(name, tmp_path, assets, capsys):
    overrides, message = CASES[name]
    code = main(["study", "--config", str(write_study(tmp_path, assets, **overrides))])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err[-2000:]
    assert err.count("error:") == 1 and "Traceback" not in err                # one message
    assert not ray.is_initialized()
    assert not list((tmp_path / "studies").glob("*/fingerprint.json"))        # nothing recorded


def test_a_study_recorded_by_an_older_version_is_refused_not_mixed(tmp_path, assets, capsys):
    study = tmp_path / "studies" / "tiny-study"
    study.mkdir(parents=True)
    (study / "fingerprint.json").write_text(json.dumps({"space": {"num_experts": [0, 9]}}))
    assert main(["study", "--config", str(write_study(tmp_path, assets))]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "older sbmoe-ray" in err and not ray.is_initialized()


def test_every_preset_loads_and_is_named_by_the_cli(capsys):
    names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    assert names == ["experts_sweep", "finetune", "paper", "paper_grade"]
    for name in names:
        load_config(StudyConfig, PRESETS / f"{name}.yaml")
    assert main(["study", "--config", "no-such-preset"]) == 2
    assert "presets are ['experts_sweep', 'finetune', 'paper', 'paper_grade']" in capsys.readouterr().err


def test_machine_policy_is_the_presets_not_a_library_default(monkeypatch):
    from sbmoe_ray.runtime import precision

    assert StudyConfig().budget_minutes is None and FinetuneConfig().seeds == 2
    quick = load_config(StudyConfig, PRESETS / "experts_sweep.yaml")
    for flags, seeds, minutes in ((frozenset({"avx512_bf16"}), 2, 45), (frozenset({"avx2"}), 1, 90)):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        assert quick.finetune.replicates()[0] == seeds and quick.budget_seconds() == 60 * minutes
        assert "native_bf16" in quick.finetune.replicates()[1] or "otherwise" in quick.finetune.replicates()[1]
        assert FinetuneConfig().replicates() == (2, "set")
    with pytest.raises(ConfigError, match=r"budget_minutes='auto'.*\{native_bf16: 45, otherwise: 90\}"):
        StudyConfig.from_dict({"budget_minutes": "auto"})


def test_a_study_begun_before_a_setting_existed_resumes_while_that_setting_keeps_its_default():
    from sbmoe_ray.study.identity import check_identity, identity

    study = StudyConfig.from_dict({"name": "older"})
    saved = identity(study)
    del saved["settings"]["train.data.train_passage_max_length"]          # written before the setting existed
    assert check_identity(study, saved)["settings"] == identity(study)["settings"]
    changed = StudyConfig.from_dict({"name": "older", "train": {"data": {"train_passage_max_length": 128}}})
    with pytest.raises(ConfigError, match=r"train_passage_max_length: \(absent\) -> 128"):
        check_identity(changed, saved)


def test_stage_one_trials_print_no_line_of_their_own_and_stage_two_trials_print_their_epochs():
    study = StudyConfig()
    assert study.proxy_stage().train.run.quiet                         # 72 trials of seconds: one line a trial
    assert not study.finetune_stage().train.run.quiet and not study.confirm_stage().train.run.quiet
