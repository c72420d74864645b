"""Screenshot of the MLflow UI comparing the trials of a study, taken with headless Chromium.

Starts ``mlflow server`` on 127.0.0.1 over the study's tracking store, waits for ``/health``, opens the
compare-runs page of every trial run of the study (params, metrics, parallel coordinates) and saves a PNG.

    python docs/mlflow_screenshot.py --experiment experts-sweep [--backend-store-uri sqlite:///mlflow.db]
                                     [--output docs/mlflow-compare.png] [--chromium chromium]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow server at {url} did not answer /health in {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="experts-sweep", help="the study's name (its MLflow experiment)")
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--output", default=str(Path(__file__).with_name("mlflow-compare.png")))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    parser.add_argument("--window", default="1600,1100")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.backend_store_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"no experiment {args.experiment!r} in {args.backend_store_uri}: run the study first")
    trials = [r.info.run_id for r in client.search_runs([experiment.experiment_id], "tags.`sbmoe.kind` = 'trial'",
                                                        max_results=200)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.backend_store_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_health(url)
        query = urllib.parse.urlencode({"runs": json.dumps(trials), "experiments": json.dumps([experiment.experiment_id])})
        page = f"{url}/#/compare-runs?{query}"
        subprocess.run([args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={args.window}", "--virtual-time-budget=20000",
                        f"--screenshot={Path(args.output).resolve()}", page], check=True, capture_output=True, timeout=180)
    finally:
        os.killpg(server.pid, signal.SIGTERM)          # the server and the workers it started
        server.wait(timeout=30)
    print(f"wrote {args.output}: {len(trials)} trials of {args.experiment!r} compared ({page})")


if __name__ == "__main__":
    main()
