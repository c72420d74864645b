"""Screenshots of the MLflow UI of a study, taken in headless Chromium driven by Playwright.

Starts ``mlflow server`` on 127.0.0.1 over the study's tracking store, waits for ``/health``, then

* ``--compare``: the compare-runs page of one base model's SB-MoE trial runs (every seed), the parallel
  coordinates set to ``num_experts``, ``top_k``, ``moe_lr`` -> test nDCG@10 of ``--dataset``;
* ``--parent``: the study's parent run with its report (``report/report.html``: the page with its figures),
* ``--stages``: the experiment's run list with the parent, its stage runs and stage 2's trials expanded,
* ``--experiments``: the experiments list (the study's in MLflow's model-training view),
* ``--trial``: a tested stage-2 trial's run page (its dataset inputs, source, registered model),
* ``--system``: stage 2's run (stage 1's without a stage 2), its system metrics tab,
* ``--models``: the registered model of ``--base-model`` with its aliases,

each with MLflow's assistant panel closed. Needs Chromium (Debian: ``apt-get install chromium``) and
``pip install playwright`` (no browser download: it drives the system Chromium).

    python docs/mlflow_screenshot.py --experiment experts-sweep [--backend-store-uri sqlite:///mlflow.db]
        [--base-model minilm] [--dataset scifact] [--compare docs/mlflow-compare.png]
        [--parent docs/mlflow-parent.png] [--stages docs/mlflow-stages.png] [--chromium /usr/bin/chromium]
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

HERE = Path(__file__).parent
# MLflow 3's sidebar toggle (GenAI / Model training) is a per-browser preference (localStorage
# `mlflow.workflowType`, default GenAI) that the URL overrides; the experiment's own tag sets its page.
ML = "?workflowType=machine_learning"


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


def close_assistant(page) -> None:
    """MLflow 3's assistant panel takes a third of the page: close it when it is open."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.last.click()
        page.wait_for_timeout(500)


def choose(page, combobox, values: list[str]) -> None:
    """Type each value into a multi-select and take the match."""
    for value in values:
        combobox.click()
        page.keyboard.type(value)
        page.wait_for_timeout(300)
        page.keyboard.press("Enter")
    page.keyboard.press("Escape")


def compare_view(page, url: str, experiment_id: str, runs: list[str], metric: str, output: str) -> None:
    query = urllib.parse.urlencode({"runs": json.dumps(runs), "experiments": json.dumps([experiment_id])})
    page.goto(f"{url}/#/compare-runs?{query}")
    page.get_by_role("button", name="Clear All").wait_for(timeout=60_000)
    close_assistant(page)
    page.get_by_role("button", name="Clear All").click()
    boxes = page.get_by_role("combobox")
    choose(page, boxes.nth(0), ["num_experts", "top_k", "moe_lr"])
    choose(page, boxes.nth(1), [metric])
    page.wait_for_timeout(2000)
    page.screenshot(path=output)


def parent_view(page, url: str, experiment_id: str, parent: str, output: str) -> None:
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{parent}/artifacts/report/report.html{ML}")
    page.get_by_text("report.html").first.wait_for(timeout=60_000)
    page.wait_for_timeout(4000)
    close_assistant(page)
    page.screenshot(path=output)


def page_view(page, url: str, path: str, wait_text: str, output: str) -> None:
    """Any page of the UI, once ``wait_text`` shows."""
    page.goto(f"{url}/#/{path}{ML}")
    page.get_by_text(wait_text).first.wait_for(timeout=60_000)
    page.wait_for_timeout(3000)
    close_assistant(page)
    page.screenshot(path=output)


def expand(page, run_name: str) -> None:
    """Click the expander left of a parent run's name in the runs table."""
    box = page.get_by_text(run_name, exact=True).last.bounding_box()      # the table row (after the breadcrumb)
    page.mouse.click(box["x"] - 33, box["y"] + box["height"] / 2)
    page.wait_for_timeout(1500)


def stages_view(page, url: str, experiment_id: str, study: str, stage: str, output: str) -> None:
    page.goto(f"{url}/#/experiments/{experiment_id}/runs{ML}")
    page.get_by_text(study, exact=True).first.wait_for(timeout=60_000)
    page.wait_for_timeout(2000)
    close_assistant(page)
    created = page.get_by_role("columnheader", name="Created").first.bounding_box()   # widen the name column
    page.mouse.move(created["x"] - 1, created["y"] + created["height"] / 2)       # the border before it
    page.mouse.down()
    page.mouse.move(created["x"] + 280, created["y"] + created["height"] / 2, steps=20)
    page.mouse.up()
    expand(page, study)
    if page.get_by_text(stage, exact=True).count():
        expand(page, stage)
    page.screenshot(path=output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="experts-sweep", help="the study's name (its MLflow experiment)")
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--base-model", default="minilm", help="whose SB-MoE runs the compare view shows")
    parser.add_argument("--dataset", default="scifact", help="the test set whose nDCG@10 ends the coordinates")
    parser.add_argument("--compare", default=str(HERE / "mlflow-compare.png"))
    parser.add_argument("--parent", default=str(HERE / "mlflow-parent.png"))
    parser.add_argument("--stages", default=str(HERE / "mlflow-stages.png"))
    parser.add_argument("--experiments", default=str(HERE / "mlflow-experiments.png"))
    parser.add_argument("--trial", default=str(HERE / "mlflow-trial.png"))
    parser.add_argument("--system", default=str(HERE / "mlflow-system-metrics.png"))
    parser.add_argument("--models", default=str(HERE / "mlflow-models.png"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(args.backend_store_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        sys.exit(f"no experiment {args.experiment!r} in {args.backend_store_uri}: run the study first")
    eid = experiment.experiment_id
    runs = [r.info.run_id for r in client.search_runs(
        [eid], f"tags.`sbmoe.kind` = 'trial' and params.base_model = '{args.base_model}' and params.num_experts != '0'",
        max_results=500)]
    parent = client.search_runs([eid], "tags.`sbmoe.kind` = 'study'")[0].info.run_id
    stages = {r.data.tags["sbmoe.stage"]: r.info.run_id for r in client.search_runs([eid], "tags.`sbmoe.kind` = 'stage'")}
    stage_run = stages.get("finetune") or stages.get("proxy")
    registered = f"{args.experiment}-{Path(args.base_model).name}"
    champion = client.get_model_version_by_alias(registered, "champion")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.backend_store_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_health(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            compare_view(page, url, eid, runs, f"{args.dataset}.ndcg_at_10", args.compare)
            parent_view(page, url, eid, parent, args.parent)
            stages_view(page, url, eid, args.experiment, "stage 2: fine-tuning (encoder + SB-MoE head)", args.stages)
            page_view(page, url, "experiments", args.experiment, args.experiments)
            page_view(page, url, f"experiments/{eid}/runs/{champion.run_id}", "Datasets", args.trial)
            page_view(page, url, f"experiments/{eid}/runs/{stage_run}/system-metrics", "system", args.system)
            page_view(page, url, f"models/{registered}", "champion", args.models)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)          # the server and the workers it started
        server.wait(timeout=30)
    print(f"wrote {args.compare} ({len(runs)} {args.base_model} SB-MoE runs), {args.parent}, {args.stages}, "
          f"{args.experiments}, {args.trial}, {args.system} and {args.models}")


if __name__ == "__main__":
    main()
