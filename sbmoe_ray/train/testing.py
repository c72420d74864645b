"""How a trained run is tested: through the embedding cache, by encoding, or in shards; here or as a Ray task.

Chosen once per run (:func:`evaluation_for`), from the run's config: a frozen encoder is tested on its
cached pooled embeddings (a matrix product, in the driver), a model trained at depth k by its top k layers on
the cached token states below them, any other model by encoding every corpus
with it (a Ray task holding the trial's workers' CPUs, or a GPU), large corpora in shards by W Ray tasks
(``evaluation.sharded``). The evaluations themselves are :mod:`sbmoe_ray.evaluation`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sbmoe_ray.data.beir import BeirDataset
from sbmoe_ray.runtime.cluster import init_ray
from sbmoe_ray.train.config import TrainConfig


def evaluation_for(cfg: TrainConfig):
    """How this run's models are tested (chosen once): through the embedding cache, by encoding, or by
    encoding in shards (``evaluation.sharded``)."""
    from sbmoe_ray.evaluation.checkpoint import CachedEvaluation

    if cfg.uses_cache:
        return CachedEvaluation(cfg.model, replace(live_evaluation(cfg).settings, device="cpu"),
                                cfg.data.query_max_length, str(cfg.cache_dir), cfg.data.identical_ids)
    if cfg.evaluation.sharded:
        return sharded_evaluation(cfg)
    return layer_evaluation(cfg) if cfg.route == "cached_layers" else live_evaluation(cfg)


def layer_evaluation(cfg: TrainConfig):
    """A depth-k model through the token-state cache: its top k layers and head, on the run's device."""
    from sbmoe_ray.evaluation.checkpoint import LayerEvaluation

    live = live_evaluation(cfg)
    return LayerEvaluation(cfg.model, live.settings, cfg.data.query_max_length, str(cfg.cache_dir), cfg.depth,
                           cfg.data.identical_ids)


def live_evaluation(cfg: TrainConfig):
    """Encoding every corpus with the run's model, with its encode settings and identical-id rules."""
    from sbmoe_ray.evaluation.checkpoint import LiveEvaluation
    from sbmoe_ray.evaluation.dense import EncodeSettings
    from sbmoe_ray.runtime.precision import device_for

    settings = EncodeSettings(batch_size=cfg.memory.eval_batch_size, max_length=cfg.model.max_length,
                              precision=cfg.memory.precision, device=device_for(cfg.scaling.use_gpu))
    return LiveEvaluation(cfg.model, settings, cfg.data.identical_ids)


def sharded_evaluation(cfg: TrainConfig):
    """The sharded evaluation of this run's models (large corpora): W encoding tasks with the workers'
    resources each, shard files under ``<run.storage_path>/encoded_shards``."""
    from sbmoe_ray.evaluation.sharded.evaluate import ShardedEvaluation

    s = cfg.scaling
    return ShardedEvaluation(live_evaluation(cfg), cfg.evaluation,
                             str(Path(cfg.run.storage_path).resolve() / "encoded_shards"),
                             cfg.evaluation.encode_workers or s.num_workers, s.cpus_per_worker, s.use_gpu)


def evaluate_best(folder: Path | None, cfg: TrainConfig, datasets: list[BeirDataset]) -> list:
    """Test the best checkpoint (or the base model) with the resources the trial's workers just released.

    Through the embedding cache it is a matrix product and runs here; otherwise a Ray task holds the
    workers' CPUs (and one GPU with ``use_gpu``), wherever the cluster has them.
    """
    if not datasets:
        return []                     # stage 2 of a study tests later, and only the chosen checkpoints
    evaluation = evaluation_for(cfg)
    if evaluation.runs_here:
        return evaluation(folder, datasets)
    import ray

    return ray.get(evaluate_remote(folder, cfg, datasets))


def evaluation_cpus(cfg: TrainConfig) -> float:
    """What a run's live evaluation is given: its training workers' CPUs (threads: at least 1)."""
    return cfg.scaling.num_workers * cfg.scaling.cpus_per_worker


def evaluate_remote(folder: Path | None, cfg: TrainConfig, datasets: list[BeirDataset]):
    """The live evaluation as a Ray task (an ObjectRef of the results) with the trial's workers' resources:
    a caller with several checkpoints to test submits them all and Ray runs as many as the cluster fits."""
    import ray

    evaluation = evaluation_for(cfg)
    s, cpus = cfg.scaling, evaluation_cpus(cfg)
    init_ray(None, cpus + 1, s.dashboard)
    if evaluation.runs_here:          # sharded: it submits its own tasks (a task around them would hold CPUs)
        return ray.put(evaluation(folder, datasets))
    # "DEFAULT": outside a Tune trial's placement group (its one bundle is the driver's 0.25 CPU), as Ray
    # Train schedules its own actors.
    task = ray.remote(num_cpus=cpus, num_gpus=s.gpus, max_retries=1,
                      scheduling_strategy="DEFAULT")(_evaluate)
    # no progress bars from a Ray task: they stream into the driver's terminal, which counts tested models itself
    quiet = replace(evaluation, settings=replace(evaluation.settings, progress=False))
    return task.remote(quiet, folder, datasets, max(1, int(cpus)))


def _evaluate(evaluation, folder: Path | None, datasets: list[BeirDataset], threads: int) -> list:
    return evaluation(folder, datasets, threads=threads)
