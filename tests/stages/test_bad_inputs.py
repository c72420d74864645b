"""Bad input against an existing study: one message naming the key (or file:line) within seconds, before any
cache, forecast or Ray, and the study's files and its MLflow store byte for byte as they were.

The existing study is a real record: its identity and config as a first run writes them (the code's own
functions), and its MLflow parent and stage runs in a real SQLite store.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
import ray

from sbmoe_ray.cli import main
from sbmoe_ray.errors import ConfigError
from sbmoe_ray.study.identity import check_identity

from helpers import bad_input_assets, free_port, record_existing_study, write_study

ANSWER_SECONDS = 8.0        # well under the first expensive step (the caches; a study's first Ray start is ~10 s)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    return bad_input_assets(tmp_path_factory.mktemp("bad"), tokenizer)


@pytest.fixture
def existing(tmp_path, assets, monkeypatch):
    """A study as its first run leaves it; the data root is an empty folder (a data root is written to only
    by a download)."""
    monkeypatch.setenv("SBMOE_DATA_DIR", str(tmp_path / "data-root"))
    (tmp_path / "data-root").mkdir()
    config = write_study(tmp_path, assets)
    return config, record_existing_study(config)


def snapshot(tmp_path: Path) -> dict[str, str]:
    """Every file under the test's folder (the study, its storage, the MLflow store, the data root) by hash."""
    return {str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp_path.rglob("*")) if p.is_file() and p.name != "study.yaml"}


CASES = {   # name: (arguments after `sbmoe study --config CONFIG`, what the one message must say)
    "a changed setting": (["--set", "train.optim.epochs=4", "--set", "train.optim.batch_size=4"],
                          r"train\.optim\.batch_size: 8 -> 4\n  train\.optim\.epochs: 2 -> 4"),
    "a changed search": (["--set", "space.moe_lr=[0.001, 0.1]"], r"space\.moe_lr: \[0\.001, 0\.01\] -> \[0\.001, 0\.1\]"),
    "no cluster at --address": (["--address", "127.0.0.1:{port}"],
                                r"--address='127\.0\.0\.1:\d+': no Ray cluster answers there"),
    "GPUs on a machine without": (["--set", "name=gpu", "--set", "train.scaling.use_gpu=true"],
                                  r"config\.train\.scaling\.use_gpu=True: this machine has no GPU"),
    "training on the test split": (["--set", "name=leak", "--set", "train.data.train_split=test"],
                                   r"config\.train\.data\.test_datasets\[0\]='data' \(test\) is the same split"),
    "a test split sharing training queries": (
        ["--set", "name=shared", "--set", "train.data.train_dataset={overlap}", "--set",
         "train.data.test_datasets=[{overlap}]"],
        r"test_datasets\[0\]='overlap' \(test\) shares 1 of its 9 queries \(e\.g\. \['q0'\]\) with the data that trains"),
    "a typo in the last test set": (["--set", "name=typo", "--set", "train.data.test_datasets=[{data}, cisii]"],
                                    r"config\.train\.data\.test_datasets\[1\]='cisii': dataset 'cisii' not found"),
    "a byte that is not UTF-8": (["--set", "name=latin", "--set", "train.data.test_datasets=[{latin1}]"],
                                 r"latin1/qrels/test\.tsv:3: not UTF-8 \(byte b'\\xe9' at column \d+\)"),
    "a name with a trailing space": (["--set", "name=space", "--set", "train.data.test_datasets=['scifact ']"],
                                     r"test_datasets\[0\]='scifact ': dataset 'scifact ': neither a dataset name"),
    "a value set as a section": (["--set", "proxy.num_trials.n=2"],
                                 r"config\.proxy\.num_trials=4 is a value, not a section"),
    "promote beyond stage 1": (["--set", "name=more", "--set", "promote=9"],
                               r"config\.promote=9: more than stage 1 offers.*raise proxy\.num_trials to >= 14"),
    "a misspelt loss": (["--set", "name=loss", "--set", "train.loss.name=in_batch_negative"],
                        r"config\.train\.loss\.name='in_batch_negative': no such loss; did you mean 'in_batch_negatives'"),
    "an unknown base model, offline": (["--set", "name=model", "--set", "space.base_model=[minilm-l4]"],
                                       r"config\.space\.base_model\[0\]='minilm-l4'.*Did you mean 'minilm-l3'"),
    "--resume of a missing study": (["--set", "name=nope", "--resume"], r"--resume: no study named 'nope'"),
    "an unwritable storage path": (["--set", "name=ro", "--set", "storage_path=/proc/forbidden"],
                                   r"config\.storage_path=.*not writable"),
    # names that would become paths outside the storage path
    "a name that climbs to the storage path's parent": (["--set", "name=.."], r"config\.name='\.\.': a name of 1-100"),
    "a name that climbs two levels": (["--set", "name=../../etc"], r"config\.name='\.\./\.\./etc': a name of"),
    "an absolute name": (["--set", "name=/tmp/elsewhere"], r"config\.name='/tmp/elsewhere': a name of"),
    "a nested name": (["--set", "name=a/b"], r"config\.name='a/b': a name of"),
    "a 300-character name": (["--set", "name=" + "n" * 300], r"config\.name='n{300}': a name of 1-100"),
    # values that cannot mean anything
    "top_k above every expert count": (["--set", "name=topk", "--set", "space.top_k=[20, 30]"],
                                       r"config\.space\.top_k=\[20, 30\]: low=20 is above every expert count"),
    "a million experts": (["--set", "name=million", "--set", "space.num_experts=[0, 1000000]"],
                          r"config\.space\.num_experts=\[0, 1000000\]: a list of distinct integers in \[0, 64\]"),
    "a thousand confirmation seeds": (["--set", "name=seeds", "--set", "finetune.confirm_seeds=1000"],
                                      r"config\.finetune\.confirm_seeds=1000: must be an integer in \[0, 100\]"),
    "an infinite learning rate, stage 2 off": (["--set", "name=inf", "--set", "finetune.encoder_lr=.inf"],
                                               r"config\.finetune\.encoder_lr=inf: must be a finite number > 0"),
    "a batch of one": (["--set", "name=one", "--set", "train.optim.batch_size=1"],
                       r"config\.train\.optim\.batch_size=1: the in-batch loss needs >= 2 pairs"),
    "nothing to test": (["--set", "name=none", "--set", "train.data.test_datasets=[]"],
                        r"config\.train\.data\.test_datasets=\[\]: a study with nothing to test"),
    "a test set listed twice": (["--set", "name=twice", "--set", "train.data.test_datasets=[{data}, {data}]"],
                                r"config\.train\.data\.test_datasets=.*more than once"),
    "more CPUs than the machine": (["--set", "name=cpus", "--set", "train.scaling.cpus_per_worker=100"],
                                   r"config\.train\.scaling\.num_workers=1 x cpus_per_worker=100: a trial would ask"),
    "no held-out queries to rank by": (["--set", "name=noval", "--set", "train.data.validation_fraction=0"],
                                       r"config\.train\.data\.validation_fraction=0: the stages rank"),
    "a batch larger than the training pairs": (["--set", "name=huge", "--set", "train.optim.batch_size=100000"],
                                               r"config\.train\.optim\.batch_size=100000: larger than the \d+ "
                                               r"training pairs"),
    "a name that is a file in the storage path": (["--set", "name=afile"],
                                                  r"config\.name='afile': .*afile is a file, not a study folder"),
    # data that cannot mean anything
    "an empty corpus": (["--set", "name=nocorpus", "--set", "train.data.test_datasets=[{empty_corpus}]"],
                        r"empty-corpus/corpus\.jsonl: no documents \(the corpus is empty\)"),
    "a judged query without text": (["--set", "name=noquery", "--set", "train.data.test_datasets=[{empty_query}]"],
                                    r"empty-query/queries\.jsonl: 1 query\(ies\) judged in test\.tsv have no text"),
    "a symbolic link loop": (["--set", "name=loop", "--set", "train.data.test_datasets=[{loop}]"],
                             r"dataset path '.*loop'.*a symbolic link that leads back to itself"),
    "a data root that is a file": (["--set", "name=file", "--set", "train.data.data_dir={file}"],
                                   r"data_dir='.*a-file': a file, not a folder"),
    "stage 2 deeper than the model": (["--set", "name=deep", "--set", "promote=1", "--set", "finetune.controls=0",
                                       "--set", "finetune.trained_layers=7"],
                                      r"config\.finetune\.trained_layers=7: base model .* has 2 layers"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_answers_in_seconds_naming_the_key_and_leaves_the_study_as_it_was(name, tmp_path, assets, existing,
                                                                                    capsys):
    config, study = existing
    (tmp_path / "studies" / "afile").write_text("a file where a study folder would go")
    before = snapshot(tmp_path)
    arguments, message = CASES[name]
    arguments = [a.format(port=free_port(), **{k: v for k, v in assets.items() if k != "model"}) for a in arguments]
    started = time.monotonic()
    code = main(["study", "--config", str(config), *arguments])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err, err[-3000:]
    assert re.search(message, err, re.S), err[-3000:]
    assert seconds < ANSWER_SECONDS, f"answered after {seconds:.1f} s"
    assert not ray.is_initialized()
    assert snapshot(tmp_path) == before                     # nothing written, nothing rewritten, no folder left
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == ["afile", "tiny-study"]


def test_evaluate_and_train_check_their_outputs_and_devices_before_any_work(tmp_path, assets, capsys):
    evaluate = ["evaluate", "--model", str(assets["model"]), "--dataset", str(assets["data"])]
    train = tmp_path / "train.yaml"
    train.write_text(f"model: {{base_model: {assets['model']}}}\ndata: {{train_dataset: {assets['data']}}}\n")
    for arguments, message in (
            ([*evaluate, "--output", "/proc/forbidden/out.json"], r"--output='/proc/forbidden': not writable"),
            ([*evaluate, "--device", "cuda"], r"--device='cuda': this machine has no GPU"),
            ([*evaluate, "--batch-size", "0"], r"--batch-size=0: must be a positive integer"),
            (["train", "--config", str(train), "--set", "run.storage_path=/proc/forbidden"],
             r"config\.run\.storage_path='/proc/forbidden': not writable"),
            (["export", str(tmp_path), "--out", str(assets["data"])], r"--out='.*': the folder is not empty")):
        started = time.monotonic()
        assert main(arguments) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err, err[-2000:]
        assert time.monotonic() - started < ANSWER_SECONDS


def test_a_new_package_version_is_refused_unless_accepted_and_then_recorded(existing):
    _, study = existing
    saved = json.loads(study.layout.fingerprint_file.read_text())
    older = {**saved, "versions": {**saved["versions"], "torch": "1.0.0"}}
    with pytest.raises(ConfigError, match=r"(?s)other package versions:\n  torch: \"1\.0\.0\" -> .*--allow-new-versions"):
        check_identity(study, older)
    accepted = check_identity(study, older, allow_new_versions=True)
    assert accepted["versions"] == saved["versions"] and accepted["earlier_versions"] == [older["versions"]]
    assert check_identity(replace(study, proxy=replace(study.proxy, max_concurrent=3)), saved) == saved  # may change


def test_a_complete_study_run_again_answers_complete_and_touches_nothing(tmp_path, existing, capsys):
    config, study = existing
    study.layout.completed_file.write_text("{}")
    before = snapshot(tmp_path)
    assert main(["study", "--config", str(config)]) == 0
    assert "is complete" in capsys.readouterr().out and not ray.is_initialized()
    assert snapshot(tmp_path) == before
