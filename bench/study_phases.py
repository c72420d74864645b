"""Where a study's time went: the cache phase, the trial phase, each trial's wall time and its overhead.

With this version's results files (which carry each ``fit``'s start and end), the trial phase is also
split into the time between trials (Tune, Optuna, MLflow, reporting: the framework's overhead) and the
time inside ``fit`` (our own work, including validation passes, checkpoints and model building).

Reads a finished study folder (stage 1's ``proxy/runs/*/results.json``, or 0.1's ``tune/*/trial_results.json``)
and Tune's per-trial ``result.json``. Trials run one at a time (``max_concurrent: 1``), so a trial's wall
time is the time from the previous trial's end to its own end, as the driver sees it (actor start,
imports, reading inputs, training, testing, reporting, MLflow logging); its *work* is training plus test
evaluation (per-epoch ``train_seconds`` and each test set's ``seconds.total``). Overhead = 1 - work / wall.

    python bench/study_phases.py results/studies/experts-sweep [--started UNIX_TIME]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def trial_ends(study: Path) -> dict[str, float]:
    """Trial id -> end time: ``seconds.end`` of the results file (new), else Tune's last timestamp (1 s)."""
    ends = {}
    for path in (study / "runs").glob("*/results.json"):
        data = json.loads(path.read_text())
        if "trial_id" in data and "end" in data.get("seconds", {}):
            ends[data["trial_id"]] = data["seconds"]["end"]
    if ends:
        return ends
    for path in (study / "tune").glob("*/result.json"):
        last = json.loads(path.read_text().splitlines()[-1])
        ends[last["trial_id"]] = float(last["timestamp"])
    return ends


def trial_work(study: Path) -> dict[str, float]:
    work = {}
    for pattern in ("runs/*/results.json", "tune/*/trial_results.json"):      # this version's, else 0.1's
        for path in study.glob(pattern):
            data = json.loads(path.read_text())
            if "trial_id" in data:
                work[data["trial_id"]] = (sum(row.get("train_seconds", 0.0) for row in data["history"])
                                          + sum(r["seconds"]["total"] for r in data["test"]))
        if work:
            return work
    return work


def fit_spans(study: Path) -> dict[str, tuple[float, float]]:
    """Trial id -> (start, end) of its ``fit`` (this version's results files only)."""
    spans = {}
    for path in (study / "runs").glob("*/results.json"):
        data = json.loads(path.read_text())
        if "trial_id" in data and "start" in data.get("seconds", {}):
            spans[data["trial_id"]] = (data["seconds"]["start"], data["seconds"]["end"])
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path)
    parser.add_argument("--started", type=float, default=None, help="when the study command started (unix time)")
    args = parser.parse_args()
    stage = args.study / "proxy" if (args.study / "proxy").is_dir() else args.study   # stage 1 (0.2), or a 0.1 study
    ends, work = trial_ends(stage), trial_work(stage)
    order = sorted(ends, key=ends.get)
    walls = [ends[b] - ends[a] for a, b in zip(order, order[1:])]
    shares = [1 - work[b] / (ends[b] - ends[a]) for a, b in zip(order, order[1:]) if b in work and ends[b] > ends[a]]
    phase = ends[order[-1]] - ends[order[0]]
    print(f"{len(order)} trials; trial phase (first trial's end to last trial's end) {phase:.1f} s")
    fits = fit_spans(stage)
    if fits:
        spans = sorted(fits.values())
        between = sum(b[0] - a[1] for a, b in zip(spans, spans[1:]))
        inside = sum(end - start for start, end in spans[1:])
        print(f"between trials (Tune, Optuna, MLflow, reporting): {between:.1f} s = "
              f"{100 * between / phase:.0f}% of the trial phase; inside fit: {inside:.1f} s "
              f"(median fit {statistics.median(end - start for start, end in spans):.2f} s)")
    if args.started:
        print(f"before the first trial ended: {ends[order[0]] - args.started:.1f} s (start-up and cache phase)")
    print(f"trial wall time: median {statistics.median(walls):.2f} s, mean {statistics.mean(walls):.2f} s")
    print(f"work (training + test evaluation) in the trial phase: {sum(work.get(t, 0.0) for t in order[1:]):.1f} s; "
          f"overhead share {100 * (1 - sum(work.get(t, 0.0) for t in order[1:]) / phase):.0f}% "
          f"(median per trial {100 * statistics.median(shares):.0f}%)")


if __name__ == "__main__":
    main()
