"""``sbmoe ui``: the MLflow UI over a study's store on 127.0.0.1, its link on the study's runs in the
model-training view; stopped with the command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from sbmoe_ray.tracking import StudyTracker
from sbmoe_ray.tracking.ui import serving

from helpers import empty_mlflow_store, free_port


@pytest.mark.slow
def test_sbmoe_ui_serves_the_studys_store_on_localhost_and_links_its_runs_in_the_training_view(tmp_path):
    import shutil

    from sbmoe_ray.study.config import StudyConfig
    from sbmoe_ray.study.layout import StudyLayout

    shutil.copyfile(empty_mlflow_store(), tmp_path / "mlflow.db")
    study = StudyConfig(name="ui-study", storage_path=str(tmp_path / "studies"),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    layout = StudyLayout(tmp_path / "studies" / "ui-study")
    layout.root.mkdir(parents=True)
    layout.config_file.write_text(json.dumps(study.to_dict(), default=str))
    tracker = StudyTracker(study.tracking_uri, study.name, layout.mlflow_runs_file)
    tracker.start_study({"name": study.name})
    experiment = tracker.experiment_id()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sbmoe_ray.cli", "ui", str(layout.root), "--port", str(port),
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert serving(port, timeout=120, proc=proc), proc.stdout.read() if proc.poll() is not None else "no answer"
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening   # localhost only
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    deadline = time.monotonic() + 30
    while serving(port, timeout=0.5) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not serving(port, timeout=0.5), "the MLflow server outlived `sbmoe ui`"
