"""What stage 2 costs on this machine, measured: a training step and the encoding of real documents, per
base model, as one Ray Train worker of stage 2 would run them (its threads, its precision, real batches);
and from those, a stage-2 trial's and a test evaluation's seconds (the estimator of
:mod:`sbmoe_ray.stages.budget`).

* a stage-2 trial: ``epochs x steps x step`` + validation (every worker encodes the held-out queries'
  positives each epoch, and ``validation_retrieval_docs`` documents once in-process, up to each epoch on Ray
  Train workers), times ``TRAIN_OVERHEAD`` (workers sharing the
  cores, all-reduce; measured), + a fixed start-up (``TRIAL_OVERHEAD_S``);
* a test evaluation: every test corpus's tokens (all of them, counted) at the measured tokens per second
  at a test evaluation's threads, times ``TEST_OVERHEAD`` plus ``TEST_FIXED_S`` (loading, queries, search,
  scoring; fitted to measured runs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

TRIAL_OVERHEAD_S = 30.0      # a stage-2 trial's start-up, checkpoint and report on Ray Train (measured: 25-35 s)
# A trial that trains in its own process (one worker): loading the model and the cache, its checkpoints
IN_PROCESS_TRIAL_S = 10.0
# Measured over the estimate from one worker timed alone (AVX2 emulation, fresh-clone quick start): two
# workers sharing 2 cores and all-reducing trained 5.6-5.9 pairs/s against 7.2 estimated (one worker: 1).
TRAIN_OVERHEAD = 1.2
# A test evaluation (at its threads, one at a time on 2 cores) over its documents' encoding, plus a fixed
# part (loading, tokenising, search, scoring). Fitted to the quick starts: MiniLM / minilm-l3 took 138 / 72 s
# with bf16 (estimated 133 / 83) and 462 / 234 s on the AVX2 emulation (481 / 240).
TEST_OVERHEAD = 1.1
TEST_FIXED_S = 20.0
# Through the state cache (depth k) nothing is loaded but the model and the cached states (fitted to the quick
# start at depth 1: docs/results/2026-12-06-depth-ladder.md, "What the plan estimated").
LAYER_TEST_FIXED_S = 5.0


@dataclass
class ModelCosts:
    """What one base model costs here, measured: a training step of one worker, encoding throughput."""
    step_s: float               # one step of one worker (batch / workers pairs, forward + backward)
    tokens_per_s: float         # encoding through the trained layers, at the worker's threads (validation)
    eval_tokens_per_s: float    # the same at a test evaluation's threads (workers x CPUs per worker)
    trial_s: float = math.nan   # estimates from those, for this study
    test_s: float = math.nan    # one test evaluation (every test set), at its threads
    eval_threads: int = 1
    cache_tokens_per_s: float = math.nan   # depth k: the frozen lower layers, building the state cache
    cache_s: float = 0.0        # depth k: the state cache of every test corpus, built once per base model before
    #                             stage 1 (with stage 1's pooled cache where it has one: then ~nothing more)


def _inputs_at_depth(model, batch: dict, depth: int | None, precision: str):
    """What the trained part of ``model`` takes: the token batch, or (depth k) the states of the layer below,
    computed here as the cache would hold them."""
    import torch

    from sbmoe_ray.model.depth import HiddenStates, lower_forward
    from sbmoe_ray.runtime.precision import autocast

    if not depth:
        return batch
    with torch.no_grad(), autocast(batch["input_ids"].device.type, precision):
        hidden = lower_forward(model.backbone, batch["input_ids"], batch["attention_mask"], depth)
    return HiddenStates(hidden.float(), batch["attention_mask"])


def _tokens_per_s(forward, tokens: int, rounds: int = 2) -> float:
    """``tokens`` over the seconds of ``forward()``, warm (the first call is not timed), the best of ``rounds``."""
    forward()
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        forward()
        best = min(best, time.perf_counter() - start)
    return tokens / best


def measure_model(cfg, threads: int, eval_threads: int) -> ModelCosts:
    """Time one training step of a worker at the study's depth (``optim.trained_layers``) and the encoding of
    real documents through the trained layers (and, at depth k, through the frozen ones that fill the cache),
    for ``cfg``'s base model. Every figure is taken warm."""
    import torch

    from sbmoe_ray.model.depth import lower_forward
    from sbmoe_ray.runtime.precision import autocast
    from sbmoe_ray.train.inputs import token_inputs
    from sbmoe_ray.train.routes import encoder_model, objective_for
    from sbmoe_ray.train.step import WholeBatchStep

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data, device, depth = token_inputs(cfg, torch.device("cpu")), torch.device("cpu"), cfg.depth
        model, per_worker = encoder_model(cfg), cfg.optim.batch_size // cfg.scaling.num_workers
        step = WholeBatchStep(objective_for(cfg), device, cfg.memory.precision)
        pairs = data.train[:per_worker]
        tokens_q, tokens_p = data.query_input([q for q, _ in pairs]), data.training_passages([d for _, d in pairs])
        queries, passages = (_inputs_at_depth(model, b, depth, cfg.memory.precision) for b in (tokens_q, tokens_p))
        step(model, queries, passages, True)                                            # warm-up
        start = time.perf_counter()
        step(model, queries, passages, True)
        step_s = time.perf_counter() - start
        model.eval()
        tokens = data.passage_input([d for _, d in pairs])
        encode = _inputs_at_depth(model, tokens, depth, cfg.memory.precision)
        count = int(tokens["attention_mask"].sum())
        rates, cache_rate = [], math.nan
        for n in (threads, eval_threads):
            torch.set_num_threads(n)
            with torch.no_grad(), autocast("cpu", cfg.memory.precision):
                rates.append(_tokens_per_s(lambda: model.embed_inputs(encode), count))
        if depth:
            with torch.no_grad(), autocast("cpu", cfg.memory.precision):
                cache_rate = _tokens_per_s(lambda: lower_forward(model.backbone, tokens["input_ids"],
                                                                 tokens["attention_mask"], depth), count)
        return ModelCosts(step_s, *rates, eval_threads=eval_threads, cache_tokens_per_s=cache_rate)
    finally:
        torch.set_num_threads(old)


def corpus_tokens(tokenizer, names: list[str], split: str, data_dir, max_length: int, query_max_length: int) -> int:
    """Every token a test evaluation encodes: each corpus's documents and judged queries, truncated."""
    from sbmoe_ray.data.beir import load_dataset

    total = 0
    for name in names:
        dataset = load_dataset(name, split, data_dir)
        for texts, length in (([d.full_text for d in dataset.corpus.values()], max_length),
                              (list(dataset.queries.values()), query_max_length)):
            total += sum(len(x) for x in tokenizer(texts, truncation=True, max_length=length)["input_ids"])
    return total


def estimate_model(cfg, costs: ModelCosts, test_tokens: int, cores: int) -> ModelCosts:
    """A trial's and a test evaluation's seconds from the measured costs (workers share ``cores``)."""
    from sbmoe_ray.data.beir import load_dataset
    from sbmoe_ray.train.inputs import split_pairs

    dataset = load_dataset(cfg.data.train_dataset, cfg.data.train_split, cfg.data.data_dir)
    train, validation = split_pairs(cfg, dataset)
    crowding = max(1.0, cfg.scaling.num_workers * cfg.scaling.cpus_per_worker / cores)   # more workers than cores
    steps = len(train) // cfg.optim.batch_size
    val_loss = math.ceil(len(validation) / cfg.optim.batch_size) * costs.step_s / 3        # forward only
    positives = len({d for _, d in validation}) * cfg.model.max_length
    retrieval = cfg.data.validation_retrieval_docs * cfg.model.max_length
    # the retrieval view: once, for the best checkpoint, in-process (with its positives again); on Ray Train
    # workers wherever an epoch is the best so far (at most every epoch)
    views = 1 if cfg.in_process else cfg.optim.epochs
    val_tokens = (cfg.optim.epochs + cfg.in_process) * positives + views * retrieval
    train_s = cfg.optim.epochs * (steps * costs.step_s + val_loss) + val_tokens / costs.tokens_per_s
    cache_s = test_tokens / costs.cache_tokens_per_s if math.isfinite(costs.cache_tokens_per_s) else 0.0
    fixed, sharing = (IN_PROCESS_TRIAL_S, 1.0) if cfg.in_process else (TRIAL_OVERHEAD_S, TRAIN_OVERHEAD)
    test_fixed = LAYER_TEST_FIXED_S if cfg.route == "cached_layers" else TEST_FIXED_S
    return replace(costs, trial_s=fixed + sharing * crowding * train_s,
                   test_s=TEST_OVERHEAD * test_tokens / costs.eval_tokens_per_s + test_fixed, cache_s=cache_s)


def measured_costs(study, models, cores: int) -> dict[str, ModelCosts]:
    """Each base model's costs for this study, measured now (base models sharing a tokenizer, such as
    ``minilm-l3`` and ``minilm``, count the test corpora's tokens once)."""
    from sbmoe_ray.model.backbones import load_tokenizer
    from sbmoe_ray.train.launch import resolved
    from sbmoe_ray.train.testing import evaluation_cpus

    stage2, costs, tokens = study.finetune_stage(), {}, {}
    for model in sorted(models):
        cfg = resolved(stage2.trial_config({"base_model": model, "num_experts": 0}, "plan"))
        tokenizer = load_tokenizer(cfg.model.base_model)
        if tokenizer.name_or_path not in tokens:
            tokens[tokenizer.name_or_path] = corpus_tokens(
                tokenizer, study.train.data.test_datasets, cfg.data.test_split, cfg.data.data_dir, cfg.model.max_length,
                cfg.data.query_max_length)
        threads, eval_threads = max(1, int(cfg.scaling.cpus_per_worker)), max(1, int(evaluation_cpus(cfg)))
        costs[model] = estimate_model(cfg, measure_model(cfg, threads, eval_threads), tokens[tokenizer.name_or_path],
                                      cores)
        c = costs[model]
        cache = (f"; the layer-state cache of the test corpora ~{c.cache_s / 60:.1f} min once, before stage 1 "
                 "(with its pooled cache: one pass)" if c.cache_s else "")
        print(f"[plan] {model} ({study.depth_label(model)}): a training step {c.step_s:.2f} s, encoding "
              f"{c.tokens_per_s:.0f} tokens/s on {threads} thread(s), {c.eval_tokens_per_s:.0f} on {eval_threads} "
              f"(warm) -> a trial ~{c.trial_s / 60:.1f} min, a test evaluation ~{c.test_s / 60:.1f} min{cache}",
              flush=True)
    return costs
