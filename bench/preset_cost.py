"""What a study preset costs, before anyone pays for it: GPU-hours per part, from measured per-step and
per-document figures (defaults: the one NVIDIA H200 run recorded in docs/results/2026-12-02-benchmarks.md, "On a GPU": a MiniLM
training step of batch 64 in 0.23 s (plain fine-tuning; 0.14 s with N = 6), SciFact's 5,183 documents and
300 queries evaluated in 5.4 s, i.e. ~960 documents/s, model loading included: an upper bound on time).

Counts come from the preset and the local data: the stage-2 entries per base model (promoted, controls,
plain fine-tuning at its tuned encoder learning rates, attribution controls), selection and confirmation seeds, SciFact's training steps per epoch at
the preset's batch size, each test corpus's documents (local files; the large collections by the BEIR
paper's sizes). Training is counted at the epoch cap (early stopping ends sooner), evaluation at the
measured rate; wall time assumes the GPUs are kept busy (``--gpus``).

Two figures are assumptions until a GPU run measures them (``bench/gpu_check.sh`` prints both): the encoding rate
of the large collections at full batch (``--large-docs-per-s``, default 10,000 MiniLM documents/s: ~5 % of an
H100's bf16 peak at ~4.8 GFLOP a 200-token document; the 960/s above is bound by model loading, not compute),
and how a GPU shared by ``finetune.gpus_per_worker`` trials divides its time (a trial is charged its share: a
MiniLM step at batch 64 leaves a GPU mostly idle, so 4 trials on one GPU are assumed to run at the speed of one).

    python bench/preset_cost.py --config paper_grade [--gpus 8] [--step-s 0.23] [--docs-per-s 960]
        [--large-docs-per-s 10000]
"""

from __future__ import annotations

import argparse
import os

from sbmoe_ray.config import load_config
from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.data.collections import BEIR_13, expand_names
from sbmoe_ray.study.config import StudyConfig
from sbmoe_ray.train.inputs import split_pairs

TRIAL_START_S = 45.0      # Ray Train worker group, model load, checkpoint and report (H200 run: 64 s whole run)
IN_PROCESS_START_S = 10.0  # one worker in its trial's own process: model load, checkpoints (no worker group)


def cost(study: StudyConfig, step_s: float, docs_per_s: float, large_docs_per_s: float | None = None
         ) -> dict[str, float]:
    """GPU-seconds per part of stage 2 and its test phase (stage 1: cached heads, minutes, not counted)."""
    ft, cfg = study.finetune, study.finetune_stage().train
    bases = len(study.space["base_model"])
    dataset = load_dataset(cfg.data.train_dataset, cfg.data.train_split, cfg.data.data_dir)
    train, validation = split_pairs(cfg, dataset)
    steps = len(train) // cfg.optim.batch_size
    validation_s = (len(validation) + ft.validation_retrieval_docs) / docs_per_s
    start = IN_PROCESS_START_S if ft.num_workers == 1 else TRIAL_START_S
    share = ft.gpus_per_worker * ft.num_workers                   # the GPU time a trial is charged
    trial_s = share * (start + ft.epochs * (steps * step_s + validation_s))
    plain = len(ft.baseline_lrs(ft.sbmoe_candidates(study.promote)))      # plain fine-tuning, tuned as much as SB-MoE
    selection_arms = 0 if ft.confirm_seeds else len(ft.attribution)   # with confirmation: built there only
    entries = ft.sbmoe_candidates(study.promote) + plain + selection_arms
    tested = 2 + len(ft.attribution)
    small_docs = sum(len(load_dataset(d, cfg.data.test_split, cfg.data.data_dir).corpus)
                     for d in study.train.data.test_datasets)
    large_docs = sum(BEIR_13.get(n, 0) for n in expand_names(study.train.data.large_test_datasets))
    seeds = ft.replicates()[0]
    confirm = ft.confirm_seeds or seeds
    return {"stage 2 selection training": bases * entries * seeds * trial_s,
            "confirmation training": bases * tested * ft.confirm_seeds * trial_s,
            "test sets": bases * tested * confirm * small_docs / docs_per_s,
            "large collections": bases * 2 * confirm * large_docs / (large_docs_per_s or docs_per_s),
            "_trial_s": trial_s, "_steps_per_epoch": steps, "_large_docs": large_docs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="paper_grade", help="a preset name or a study YAML")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--step-s", type=float, default=0.23, help="one training step, batch 64, one GPU")
    parser.add_argument("--docs-per-s", type=float, default=960.0, help="test encoding + search, one GPU")
    parser.add_argument("--large-docs-per-s", type=float, default=10000.0,
                        help="the large collections' encoding at full batch, one GPU (an assumption until measured)")
    args = parser.parse_args()
    from sbmoe_ray.cli import PRESETS

    path = PRESETS / f"{args.config}.yaml" if (PRESETS / f"{args.config}.yaml").is_file() else args.config
    study = load_config(StudyConfig, path)
    parts = cost(study, args.step_s, args.docs_per_s, args.large_docs_per_s)
    print(f"{args.config}: a stage-2 trial at its cap of {study.finetune.epochs} epochs x "
          f"{parts['_steps_per_epoch']} steps: {parts['_trial_s'] / 60:.1f} GPU-min; large collections: "
          f"{parts['_large_docs'] / 1e6:.1f} M documents (data root {os.environ.get('SBMOE_DATA_DIR', 'default')})")
    total = 0.0
    for name, seconds in parts.items():
        if not name.startswith("_"):
            total += seconds
            print(f"  {name:28s} {seconds / 3600:8.1f} GPU-h")
    print(f"  {'total':28s} {total / 3600:8.1f} GPU-h = {total / 3600 / args.gpus:.1f} h on {args.gpus} GPUs "
          f"(step {args.step_s} s, {args.docs_per_s:.0f} docs/s, large collections {args.large_docs_per_s:.0f} "
          f"docs/s, {study.finetune.gpus_per_worker:g} GPU a trial worker)")


if __name__ == "__main__":
    main()
