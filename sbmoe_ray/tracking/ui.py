"""``sbmoe ui [STUDY_FOLDER]``: the MLflow UI over a study's tracking store, opened on its experiment.

``mlflow ui`` alone opens on MLflow 3.17's GenAI view (its sidebar toggle lives in the browser's storage and
defaults to GenAI; mlflow#24498), whatever the experiment's ``mlflow.experimentKind`` tag says. The link this
prints names the model-training view (``?workflowType=machine_learning``), so a browser with a fresh profile
lands on the study's runs. The server listens on 127.0.0.1 only.

One person browses one study: the server runs one worker (``mlflow ui`` starts 4) and without MLflow's job
execution (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``, on by default in 3.17: a job runner and 7 Huey consumer
processes for GenAI jobs a study never submits); what they cost at start-up: docs/stack-notes.md, MLflow.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ML_VIEW = "?workflowType=machine_learning"


def study_link(study_dir: Path, port: int) -> tuple[str, str]:
    """The study's tracking URI and the link to its experiment's runs in the model-training view."""
    from mlflow.tracking import MlflowClient

    from sbmoe_ray.errors import ConfigError
    from sbmoe_ray.study.config import load_study

    study = load_study(study_dir)
    experiment = MlflowClient(tracking_uri=study.tracking_uri).get_experiment_by_name(study.name)
    if experiment is None:
        raise ConfigError(f"{study_dir}: no MLflow experiment {study.name!r} in {study.tracking_uri} (the study has "
                          "not started its runs yet, or its store moved)")
    return study.tracking_uri, f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs{ML_VIEW}"


def serving(port: int, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> bool:
    """Whether something answers on 127.0.0.1:``port`` within ``timeout`` (False at once if ``proc`` ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.3)
    return False


def run_ui(study_dir: Path, port: int = 5000, open_browser: bool = True) -> int:
    """Serve the study's store on 127.0.0.1:``port`` until Ctrl-C; print (and open) the link to its runs."""
    from sbmoe_ray.runtime.signals import stopping_on_signals

    uri, link = study_link(study_dir, port)
    with stopping_on_signals():            # Ctrl-C or SIGTERM: the server goes with this command
        return _serve(uri, link, port, study_dir, open_browser)


def _serve(uri: str, link: str, port: int, study_dir: Path, open_browser: bool) -> int:
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if not serving(port, proc=proc):
            error = proc.stderr.read()[-2000:] if proc.poll() is not None else "no answer in 90 s"
            print(f"sbmoe: error: the MLflow UI did not start on 127.0.0.1:{port}: {error}", file=sys.stderr)
            return 1
        print(f"MLflow UI of {Path(study_dir).name}: {link}\n(serving {uri} on 127.0.0.1 only; Ctrl-C stops it)",
              flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(link)          # False, and nothing else, where no browser exists
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
