"""What validation's retrieval view (``val_ndcg@10``) adds to one validation of a finished study run.

A stage-2 run validates every epoch (the loss over every held-out pair: the held-out queries and positives
embedded once); the retrieval view embeds ``validation_retrieval_docs`` more documents and ranks. Until
2026-12-07 an in-process run added it at every epoch that was the best so far; now once, for the best
checkpoint, after the last epoch. This times one validation of the run's best checkpoint without and with
the view, interleaved over rounds, in one process at the run's threads, on the study's cached states:

    python bench/retrieval_view.py results/studies/experts-sweep/confirm/runs/<trial> [--rounds 3]

and counts, over the study's stage-2 runs, the epochs whose history holds the view (each such epoch paid for it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sbmoe_ray.model.bi_encoder import load_weights
from sbmoe_ray.model.losses import build_loss
from sbmoe_ray.runtime.hardware import describe_machine
from sbmoe_ray.train.config import TrainConfig
from sbmoe_ray.train.routes import ROUTES
from sbmoe_ray.train.validation import validate_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a stage-2 run folder (it holds results.json)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    recorded = json.loads((args.run / "results.json").read_text())
    cfg = TrainConfig.from_dict(recorded["config"])
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    route, cpu = ROUTES[cfg.route], torch.device("cpu")
    data = route.inputs(cfg, cpu)
    model = route.model(cfg)
    load_weights(model, Path(recorded["best_checkpoint"]))
    criterion = build_loss(cfg.loss.name, cfg.loss.temperature)
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(args.rounds):
        for name, retrieval in (("without", lambda _: False), ("with", None)):
            start = time.perf_counter()
            validate_pairs(model, data, criterion, cfg, cpu, retrieval=retrieval, per_pair=True)
            times[name].append(time.perf_counter() - start)
    print(f"machine: {describe_machine()}; {torch.get_num_threads()} thread(s), precision {cfg.memory.precision}, "
          f"route {cfg.route}; {len(data.validation)} held-out pairs, {cfg.data.validation_retrieval_docs} sampled docs")
    for name, values in times.items():
        print(f"  validation {name} the retrieval view: median {statistics.median(values):.2f} s of "
              f"{', '.join(f'{v:.2f}' for v in values)}")
    study = args.run.parents[2]
    epochs = viewed = runs = 0
    for results in sorted(study.glob("*/runs/*/results.json")):
        history = json.loads(results.read_text()).get("history") or []
        if results.parts[-4] == "proxy" or not history:
            continue
        runs += 1
        epochs += len(history)
        viewed += sum("val_ndcg@10" in epoch for epoch in history)
    print(f"stage-2 runs of {study}: {runs}, {epochs} epochs, {viewed} of them computed the retrieval view")


if __name__ == "__main__":
    main()
