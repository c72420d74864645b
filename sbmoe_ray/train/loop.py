"""The training loop of one worker, top to bottom: seed, inputs, model, optimizer, resume; then per epoch
train, validate, checkpoint and report, until early stopping or the epoch cap; then the best checkpoint's
retrieval view (``val_ndcg@10``), once.

It is the same loop on every route and in every session: the route (:mod:`sbmoe_ray.train.routes`) gives the
inputs, the model and the step; the session (:mod:`sbmoe_ray.train.session`) gives rank, device, resume
and reporting. AdamW with two learning rates (encoder, SB-MoE block), linear warm-up then a schedule, gradient
clipping (Sokli et al. 2025 train with AdamW, the encoder at a much lower rate than the block); when to stop
and the schedule are :mod:`sbmoe_ray.train.stopping`.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbmoe_ray.model.bi_encoder import BiEncoder, load_weights
from sbmoe_ray.model.losses import build_loss
from sbmoe_ray.model.moe import ExpertLoad
from sbmoe_ray.train.config import CHECKPOINT_METRICS, TrainConfig
from sbmoe_ray.train.inputs import PairData, Pairs, epoch_batches, token_count
from sbmoe_ray.train.routes import ROUTES, Route, Step, objective_for
from sbmoe_ray.train.session import RayTrainSession, log_progress, save_checkpoint
from sbmoe_ray.train.step import all_sum
from sbmoe_ray.train.stopping import EarlyStopping, lr_multiplier
from sbmoe_ray.train.validation import validate_pairs


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: BiEncoder, cfg: TrainConfig, total_steps: int = 0):
    """AdamW over the trained encoder (``encoder_lr``) and the SB-MoE block (``moe_lr``), and its schedule
    over ``total_steps`` (:func:`sbmoe_ray.train.stopping.lr_multiplier`)."""
    groups = []
    if model.backbone is not None and not model.frozen_encoder:     # every layer, or the top trained_layers
        trained = [p for p in model.backbone.parameters() if p.requires_grad]
        groups.append({"params": trained, "lr": cfg.optim.encoder_lr, "name": "encoder"})
    if model.head is not None:
        groups.append({"params": list(model.head.parameters()), "lr": cfg.optim.moe_lr, "name": "sbmoe"})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(cfg.optim.schedule, cfg.optim.warmup_steps, total_steps))
    return optimizer, scheduler


def steps_per_epoch(num_pairs: int, cfg: TrainConfig) -> int:
    """Optimizer steps of one epoch: its full global batches, at most ``optim.max_steps_per_epoch``."""
    return min(num_pairs // cfg.optim.batch_size, cfg.optim.max_steps_per_epoch or num_pairs)


def run_epoch(model: torch.nn.Module, step: Step, data: PairData, pairs: Pairs, cfg: TrainConfig, rank: int,
              world: int, epoch: int, optimizer, scheduler) -> dict[str, Any]:
    """One training pass over ``pairs`` in full global batches (the last partial batch is dropped);
    validation is :func:`sbmoe_ray.train.validation.validate`."""
    bare = getattr(model, "module", model)
    load = ExpertLoad.empty(bare.head.num_experts) if bare.head is not None else None
    batches = epoch_batches(len(pairs), cfg.optim.batch_size, rank, world, cfg.run.seed, epoch)
    if cfg.optim.max_steps_per_epoch:
        batches = batches[: cfg.optim.max_steps_per_epoch]
    sums, step_seconds = torch.zeros(3, dtype=torch.float64), []          # loss, accuracy, steps
    tokens = np.zeros(2, dtype=np.int64)                                  # tokens, texts encoded
    model.train(True)
    start = time.perf_counter()
    for index in batches:
        step_start = time.perf_counter()
        queries = data.query_input([pairs[i][0] for i in index])
        passages = data.training_passages([pairs[i][1] for i in index])
        tokens += np.add(token_count(queries), token_count(passages))
        optimizer.zero_grad(set_to_none=True)
        out, loss, accuracy = step(model, queries, passages, True)
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        sums += torch.tensor([loss.item(), accuracy.item(), 1.0], dtype=torch.float64)
        if load is not None:
            load.update(out.routing)
        step_seconds.append(time.perf_counter() - step_start)
    seconds = time.perf_counter() - start
    metrics = _epoch_metrics(sums, load, step_seconds, seconds, len(batches), cfg, world,
                             next(bare.parameters()).device)
    if tokens[0]:
        metrics.update(_utilisation(bare, tokens, seconds, cfg))
    return metrics


def _utilisation(model: BiEncoder, tokens: np.ndarray, seconds: float, cfg: TrainConfig) -> dict[str, float]:
    """This worker's model FLOP/s and its share of the measured matmul ceiling (nanoGPT's MFU, for CPUs too)."""
    from sbmoe_ray.runtime.hardware import encoder_flops_per_token, utilisation

    passes = 1 if model.frozen_encoder else 3                    # forward only, or forward + backward
    share = 1.0 if model.trained_layers is None else model.trained_layers / model.backbone.config.num_hidden_layers
    flops = passes * share * encoder_flops_per_token(model.backbone, int(tokens[0] / max(tokens[1], 1))) * tokens[0]
    device = str(next(model.parameters()).device)
    return {"train_tflops": flops / max(seconds, 1e-9) / 1e12,
            "train_utilisation": utilisation(flops, seconds, cfg.memory.precision, device)}


def _epoch_metrics(sums, load, step_seconds, seconds, steps_run, cfg, world, device) -> dict[str, Any]:
    """The training loss and accuracy averaged over every worker's steps, timing, and the merged expert load."""
    sums = all_sum(sums.to(device), world).cpu()
    steps = max(sums[2].item(), 1.0)
    metrics = {"train_loss": sums[0].item() / steps, "train_accuracy": sums[1].item() / steps,
               "train_seconds": seconds, "pairs_per_second": steps_run * cfg.optim.batch_size / max(seconds, 1e-9),
               "step_seconds_median": float(np.median(step_seconds)) if step_seconds else float("nan")}
    if device.type == "cuda":
        metrics["cuda_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if load is not None:
        merged = ExpertLoad.from_tensor(all_sum(load.to_tensor().to(device), world).cpu())
        metrics.update({f"train_load.{k}": v for k, v in merged.summary().items()})
    return metrics


def train_worker(cfg: TrainConfig, session, route: Route) -> None:
    """The training loop of one worker: restore, then per epoch train, validate, checkpoint, report, until
    the early-stopping criterion or the epoch cap (:mod:`sbmoe_ray.train.stopping`)."""
    rank, world, device = session.rank, session.world, session.device
    seed_everything(cfg.run.seed)
    data = route.inputs(cfg, device)
    # On the device before the optimizer exists: a restored optimizer state follows its parameters' device.
    model = route.model(cfg).to(device)
    steps = steps_per_epoch(len(data.train), cfg)
    optimizer, scheduler = build_optimizer(model, cfg, steps * cfg.optim.epochs)
    metric = cfg.run.checkpoint_metric
    stopper = EarlyStopping(metric, CHECKPOINT_METRICS[metric], cfg.optim.patience, cfg.optim.min_delta,
                            cfg.optim.min_delta_se)
    start_epoch = session.resume(model, optimizer, scheduler, stopper)
    if start_epoch and rank == 0:
        print(f"[{cfg.run.name}] resuming from the checkpoint of epoch {start_epoch}/{cfg.optim.epochs} in "
              f"{cfg.run_dir}", flush=True)
    model = session.wrap(model)
    bare = getattr(model, "module", model)
    step = route.step(cfg, objective_for(cfg, rank, world), device)
    criterion = build_loss(cfg.loss.name, cfg.loss.temperature)        # validation: the loss alone
    # val_ndcg@10 (500-odd more documents to encode): every epoch where it is the checkpoint metric; else once,
    # for the best checkpoint after the last epoch, where the session can reload it (in-process), and where an
    # epoch is the best so far where it cannot (Ray Train workers): either way the tested checkpoint has it
    once = metric != "val_ndcg@10" and session.checkpoints is not None
    retrieval = None if metric == "val_ndcg@10" else (lambda _: False) if once else stopper.sets_raw_best

    for epoch in range(start_epoch, cfg.optim.epochs):
        if stopper.exhausted:              # a run resumed after it had stopped: nothing left to train
            break
        if rank == 0:
            log_progress(cfg.run_dir, "epoch_start", epoch=epoch, device=str(device))
        trained = run_epoch(model, step, data, data.train, cfg, rank, world, epoch, optimizer, scheduler)
        metrics = {"epoch": epoch, "steps_done": (epoch + 1) * steps, **trained}
        pairs: dict[str, list[float]] = {}
        if data.validation:            # each rank embeds its share of the held-out texts; all get the metrics
            validated, pairs = validate_pairs(bare, data, criterion, cfg, device, rank, world, retrieval,
                                              per_pair=bool(cfg.optim.min_delta_se))
            metrics.update(validated)
        stop = stopper.update(epoch, metrics, pairs.get(metric))
        metrics.update({"since_best": stopper.since_best, "stopped_early": float(stop),
                        "val_noise_se": stopper.noise_se, "val_improve_threshold": stopper.threshold})
        if rank == 0:
            log_progress(cfg.run_dir, "epoch_end", epoch=epoch, metrics=metrics)
            if not cfg.run.quiet:
                _print_epoch(cfg, metrics, stopper.reason() if stop else "")
        with session.checkpoint_folder(epoch) as folder:      # written once where it is kept (in-process runs)
            if rank == 0:
                save_checkpoint(Path(folder), bare, cfg, optimizer, scheduler, epoch, stopper)
            session.report(metrics, Path(folder) if rank == 0 else None)
        if stop:
            break
    if data.validation and once:
        _retrieval_of_best(bare, data, criterion, cfg, device, session.checkpoints)


def _retrieval_of_best(model: BiEncoder, data: PairData, criterion, cfg: TrainConfig, device: torch.device,
                       checkpoints) -> None:
    """``val_ndcg@10`` of the best checkpoint, computed once after the last epoch and added to its metrics
    (a run resumed after it had stopped finds it there and computes nothing)."""
    if not cfg.data.validation_retrieval_docs or not checkpoints.all():
        return
    folder, metrics = checkpoints.best()
    if "val_ndcg@10" in metrics:
        return
    load_weights(model, folder)
    validated, _ = validate_pairs(model, data, criterion, cfg, device, per_pair=False)
    if "val_ndcg@10" in validated:     # absent where the corpus has no document besides the held-out positives
        checkpoints.annotate(folder, {"val_ndcg@10": validated["val_ndcg@10"]})


def _print_epoch(cfg: TrainConfig, metrics: dict[str, Any], stopped: str) -> None:
    """The epoch's log line: losses, speed, and utilisation against the hardware's matmul ceiling."""
    print(f"[{cfg.run.name}] epoch {metrics['epoch'] + 1}/{cfg.optim.epochs} (step {metrics['steps_done']})  "
          f"train_loss {metrics['train_loss']:.4f}  val_loss {metrics.get('val_loss', float('nan')):.4f}  "
          f"{metrics['pairs_per_second']:.1f} pairs/s"
          + (f"  {metrics['train_tflops']:.3f} TFLOP/s per worker = {100 * metrics['train_utilisation']:.0f}% "
             f"of its {cfg.memory.precision} matmul ceiling" if "train_utilisation" in metrics else "")
          + (f"\n[{cfg.run.name}] early stop: {stopped}; the best checkpoint is the one tested" if stopped else ""),
          flush=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point on each worker: the route, chosen once, and this worker's session."""
    cfg = TrainConfig.from_dict(config)
    train_worker(cfg, RayTrainSession(cfg), ROUTES[cfg.route])
