"""Training speed: our loop vs sentence-transformers, the SB-MoE head's overhead, the frozen fast path.

1. One process, MiniLM, batch 64, max length 256 for queries and passages, fp32, on SciFact train pairs:
   median step time of our loop (N = 0, the plain bi-encoder) vs sentence-transformers'
   ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` (same pairs, same batch size).
   Ours first with the base model's attention dropout (0.1, as sentence-transformers trains), then with
   our default (0: PyTorch's fused CPU attention kernel), then bf16 autocast. The first step of each is
   warm-up and is not counted.
2. SB-MoE head overhead: N = 6, top-1 vs N = 0, bf16, runs interleaved (A B A B) and median step times.
3. The frozen-encoder fast path: a 3-epoch SciFact run (N = 6, one worker, so in-process) through
   ``fit`` once the embedding cache is built: wall time of ``fit`` and the training time in it.

    python bench/train_throughput.py [--steps 6] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace

import torch

from sbmoe_ray.data.beir import load_dataset, training_pairs
from sbmoe_ray.data.splits import split_by_query
from sbmoe_ray.model.backbones import resolve_model
from sbmoe_ray.model.bi_encoder import ModelConfig
from sbmoe_ray.train import TrainConfig, fit, resolved
from sbmoe_ray.train.loop import build_optimizer, run_epoch
from sbmoe_ray.train.routes import ROUTES, objective_for

SEARCH_ORDER = ("run", "data", "optim", "memory", "scaling", "model", "loss")


def settings(cfg: TrainConfig, **values) -> TrainConfig:
    """``cfg`` with settings given by field name, wherever their section is (``name``: the run's)."""
    from dataclasses import fields

    for key, value in values.items():
        section = next(s for s in SEARCH_ORDER if key in {g.name for g in fields(getattr(cfg, s))})
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{key: value})})
    return cfg


def stage2_step(data_dir: str | None) -> TrainConfig:
    """Plain MiniLM fine-tuning as stage 2 trains it, in one process: SciFact, batch 64, queries <= 64 and
    passages <= 256 tokens, encoder lr 2e-5, bf16 where native (the step of the item-7 bench scripts)."""
    return settings(TrainConfig(model=ModelConfig(base_model="minilm", num_experts=0, max_length=256)),
                    train_dataset="scifact", batch_size=64, query_max_length=64, encoder_lr=2e-5,
                    precision="auto", data_dir=data_dir, num_workers=1)


def ours(cfg: TrainConfig, steps: int) -> tuple[float, float]:
    """Median seconds per step of our loop, in this process (no Ray), first step excluded, and the share of
    the matmul ceiling (at the run's precision) that the measured steps reached."""
    cfg, cpu = resolved(cfg), torch.device("cpu")
    route = ROUTES[cfg.route]
    model = route.model(cfg)
    optimizer, scheduler = build_optimizer(model, cfg)
    data, step = route.inputs(cfg, cpu), route.step(cfg, objective_for(cfg), cpu)
    run_epoch(model, step, data, data.train, settings(cfg, max_steps_per_epoch=1), 0, 1, 0, optimizer, scheduler)
    metrics = run_epoch(model, step, data, data.train, settings(cfg, max_steps_per_epoch=steps), 0, 1, 1,
                        optimizer, scheduler)
    return metrics["step_seconds_median"], metrics.get("train_utilisation", float("nan"))


def sentence_transformers_reference(cfg: TrainConfig, steps: int) -> float:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    dataset = load_dataset(cfg.data.train_dataset, "train", cfg.data.data_dir)
    train, _ = split_by_query(training_pairs(dataset.qrels), cfg.data.validation_fraction, cfg.run.seed)
    pairs = Dataset.from_dict({"anchor": [dataset.queries[q] for q, _ in train],
                               "positive": [dataset.corpus[d].full_text for _, d in train]})
    model = SentenceTransformer(resolve_model(cfg.model.base_model).source, device="cpu")
    model.max_seq_length = cfg.model.max_length

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=cfg.optim.batch_size, max_steps=steps + 1, learning_rate=cfg.optim.encoder_lr,
            use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no", dataloader_drop_last=True,
            disable_tqdm=True, seed=cfg.run.seed)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs,
                                             loss=MultipleNegativesRankingLoss(model, scale=1 / cfg.loss.temperature),
                                             callbacks=[timer])
        trainer.train()
    step_times = [end - begin for begin, end in zip(timer.stamps[0::2], timer.stamps[1::2])]
    return statistics.median(step_times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    from sbmoe_ray.runtime.hardware import describe_machine, matmul_ceiling

    print(f"machine: {describe_machine()}")
    print(f"matmul ceiling (1024², all threads): fp32 {matmul_ceiling('fp32') / 1e9:.0f} GFLOP/s, "
          f"bf16 {matmul_ceiling('bf16') / 1e9:.0f} GFLOP/s", flush=True)
    base = settings(TrainConfig(model=ModelConfig(base_model="minilm", num_experts=0, max_length=256)),
                    train_dataset="scifact", batch_size=64, query_max_length=256, encoder_lr=2e-5, moe_lr=1e-3,
                    precision="fp32", data_dir=args.data_dir, num_workers=1)
    pairs_per_step = base.optim.batch_size

    print("1. training throughput, one process, batch 64, max length 256 (median s/step, first step excluded)")
    reference = sentence_transformers_reference(base, args.steps)
    print(f"   sentence-transformers MNRL fp32  {reference:7.2f} s/step  {pairs_per_step / reference:6.1f} pairs/s  1.00x",
          flush=True)
    for label, cfg in [("fp32, attention dropout 0.1", settings(base, attention_dropout=None)),
                       ("fp32 (attention dropout 0)", base), ("bf16 (attention dropout 0)", settings(base, precision="bf16"))]:
        t, used = ours(cfg, args.steps)
        print(f"   ours N=0 {label:28s} {t:7.2f} s/step  {pairs_per_step / t:6.1f} pairs/s  {reference / t:.2f}x  "
              f"{100 * used:.0f}% of the {cfg.memory.precision} ceiling", flush=True)

    print("2. SB-MoE head overhead, bf16, interleaved runs (median s/step)")
    moe = settings(base, precision="bf16", num_experts=6, top_k=1)
    plain = settings(base, precision="bf16")
    plain_times, moe_times = [], []
    for _ in range(2):
        plain_times.append(ours(plain, args.steps)[0])
        moe_times.append(ours(moe, args.steps)[0])
    p, m = statistics.median(plain_times), statistics.median(moe_times)
    print(f"   N=0 {p:.3f} s/step   N=6 top-1 {m:.3f} s/step   overhead {100 * (m / p - 1):+.1f}%", flush=True)

    print("3. frozen-encoder fast path: 3 SciFact epochs, N=6, 1 worker (in-process), embedding cache built")
    with tempfile.TemporaryDirectory() as storage:
        frozen = settings(base, num_experts=6, top_k=1, encoder_lr=0.0, epochs=3, query_max_length=64,
                          precision="bf16", storage_path=storage, cpus_per_worker=2.0, test_datasets=["scifact"])
        start = time.perf_counter()
        fit(settings(frozen, name="build-cache"))
        first = time.perf_counter() - start
        start = time.perf_counter()
        result = fit(settings(frozen, name="cached"))
        second = time.perf_counter() - start
        train_seconds = sum(row["train_seconds"] for row in result.history)
        start = time.perf_counter()
        workers = fit(settings(frozen, name="cached-ray-train", num_workers=2, cpus_per_worker=1.0))
        through_ray = time.perf_counter() - start
        print(f"   first run (builds the cache) {first:6.1f} s")
        print(f"   cached run, in-process: fit() wall {second:5.1f} s, of which training {train_seconds:.2f} s over "
              f"3 epochs; test nDCG@10 {result.test[0].metrics.means['ndcg@10']:.4f}")
        print(f"   the same through Ray Train (2 workers, starting Ray): fit() wall {through_ray:5.1f} s "
              f"({through_ray / second:.1f}x); test nDCG@10 {workers.test[0].metrics.means['ndcg@10']:.4f}")


if __name__ == "__main__":
    main()
