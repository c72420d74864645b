"""A study killed with SIGKILL in each of its phases, resumed each time, then counted (issue 20, "resume exactly").

    python bench/kill_resume.py --workdir /tmp/kill-resume [--set KEY=VALUE ...]

Runs ``sbmoe study`` (the default preset, with the overrides) in its own process group from ``--workdir``
(its MLflow store is ``<workdir>/mlflow.db``); kills the whole group (driver, local Ray, workers) in stage 1
one second after a trial finished while the next runs, inside a stage-2 fine-tuning (after its first
epoch started), and in the test phase (after the first tested model); runs the same command after each
kill; and at the end counts: every configuration x seed of each stage trained once, every MLflow run
ended, none duplicated. Writes ``<workdir>/kill_resume.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

STUDY = "kill-resume"


def started_unfinished(stage: Path) -> list[Path]:
    return [p.parent for p in (stage / "runs").glob("*/progress.jsonl") if not (p.parent / "results.json").is_file()]


def in_proxy(root: Path, log: str) -> bool:
    stage = root / "proxy"
    return bool(list((stage / "runs").glob("*/results.json"))) and bool(started_unfinished(stage))


def in_finetune(root: Path, log: str) -> bool:
    return any("epoch_start" in (run / "progress.jsonl").read_text() for run in started_unfinished(root / "finetune"))


def in_test(root: Path, log: str) -> bool:
    return "[test] 1/" in log


PHASES = [("stage 1, a trial running after one finished", in_proxy, 1.0),
          ("stage 2, inside a fine-tuning", in_finetune, 5.0),
          ("the test phase, after the first tested model", in_test, 1.0)]


def run_until(command: list[str], workdir: Path, log: Path, root: Path, phase) -> dict:
    """Run the study; kill its process group once ``phase`` holds (then wait ``delay``)."""
    name, predicate, delay = phase if phase else (None, None, 0.0)
    started = time.monotonic()
    with open(log, "a") as out:
        proc = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            if predicate and predicate(root, log.read_text(errors="replace")):
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return {"phase": name, "killed": True, "seconds": round(time.monotonic() - started, 1)}
            time.sleep(0.5)
    return {"phase": name or "to the end", "killed": False, "rc": proc.returncode,
            "seconds": round(time.monotonic() - started, 1)}


def count(root: Path, tracking_uri: str) -> dict:
    from mlflow.tracking import MlflowClient

    from sbmoe_ray.analysis.records import load_trials
    from sbmoe_ray.study.layout import StudyLayout

    layout, out = StudyLayout(root), {}
    for stage in ("proxy", "finetune"):
        records = load_trials(layout.stage(stage))
        points = Counter((r.group, r.seed) for r in records)
        out[stage] = {"trials": len(records), "points": len(points), "repeated": sum(v > 1 for v in points.values())}
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    trials = [r for r in runs if r.data.tags.get("sbmoe.kind") == "trial"]
    keys = Counter((r.data.tags.get("sbmoe.stage"), r.data.tags.get("sbmoe.group"), r.data.tags.get("sbmoe.seed"))
                   for r in trials)
    out["mlflow"] = {"runs": len(runs), "status": dict(Counter(r.info.status for r in runs)),
                     "trial_runs": len(trials), "duplicated": sum(v > 1 for v in keys.values())}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "sbmoe_ray.cli", "study", "--set", f"name={STUDY}",
               *[x for s in args.set for x in ("--set", s)]]
    root, log = workdir / "results" / "studies" / STUDY, workdir / "study.log"
    steps = [run_until(command, workdir, log, root, phase) for phase in PHASES]
    steps.append(run_until(command, workdir, log, root, None))
    result = {"command": command, "steps": steps, "counts": count(root, f"sqlite:///{workdir / 'mlflow.db'}")}
    (workdir / "kill_resume.json").write_text(json.dumps(result, indent=2))
    for step in steps:
        print(f"{step['phase']:<48} {'SIGKILL' if step['killed'] else 'rc ' + str(step['rc']):>8} {step['seconds']:>8} s")
    print(json.dumps(result["counts"], indent=2))
    ok = steps[-1].get("rc") == 0 and all(s["killed"] for s in steps[:-1]) and \
        not any(result["counts"][s]["repeated"] for s in ("proxy", "finetune")) and \
        not result["counts"]["mlflow"]["duplicated"] and set(result["counts"]["mlflow"]["status"]) == {"FINISHED"}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
