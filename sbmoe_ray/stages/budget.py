"""Stage 2 sized to a time budget: costs measured on this machine, the plan made once and kept on resume.

Why: the quick start must end within 45 minutes where bf16 is native and 90 on an AVX2-only CPU (issue 12),
but CPUs of one class differ twofold and more (a 2-core AMD EPYC ran fp32 matrix products at 100 GFLOP/s,
an AVX2-capped Xeon at 228): a fixed stage 2 is too small for one machine or too long for the other. With
``budget_minutes`` the study measures, before stage 2 and as one Ray Train worker would run them (its
threads, its precision, real SciFact batches), one training step and the encoding of real documents of
each base model, and estimates

* a stage-2 trial: ``epochs x steps x step`` + validation (every worker encodes the held-out queries'
  positives and ``validation_retrieval_docs`` documents), times ``TRAIN_OVERHEAD`` (workers sharing the
  cores, all-reduce; measured), + a fixed start-up (``TRIAL_OVERHEAD_S``);
* the test phase: every test corpus's tokens (all of them, counted) at the measured tokens per second, for
  the baseline and the chosen configuration of each base model and each seed, encoded at a test
  evaluation's threads, times ``TEST_OVERHEAD`` plus ``TEST_FIXED_S`` (loading, queries, search, scoring;
  fitted to measured runs), as many at once as the cores hold.

Then, while the estimate exceeds the time left of the budget, it drops stage-2 work, least needed first:
replicates beyond the first, then per base model (in turn) its entries from the end of the order
``promoted #1, control #1, promoted #2, control #2, ...`` (so the rank check keeps a control as long as it
has three configurations). The baseline and the top configuration of each base model always run: they are
the answer. The plan (costs, estimate, what was dropped) is written once (``<study>/finetune/plan.json``):
a resumed study runs exactly the planned stage 2. The large collections are not in the estimate.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

PLAN_FILE = "plan.json"
TRIAL_OVERHEAD_S = 30.0      # a stage-2 trial's start-up, checkpoint and report (measured: 25-35 s on 2 cores)
# Measured over the estimate from one worker timed alone (AVX2 emulation, fresh-clone quick start): two
# workers sharing 2 cores and all-reducing trained 5.6-5.9 pairs/s against 7.2 estimated.
TRAIN_OVERHEAD = 1.2
# A test evaluation (at its threads, one at a time on 2 cores) over its documents' encoding, plus a fixed
# part (loading, tokenising, search, scoring). Fitted to the quick starts: MiniLM / minilm-l3 took 138 / 72 s
# with bf16 (estimated 133 / 83) and 462 / 234 s on the AVX2 emulation (481 / 240).
TEST_OVERHEAD = 1.1
TEST_FIXED_S = 20.0
_MEASURED: dict[tuple, dict[str, "ModelCosts"]] = {}   # per process: the forecast and the plan share them
_TOKENS: dict[tuple, int] = {}                           # test-corpus tokens per tokenizer


@dataclass
class ModelCosts:
    """What one base model costs here, measured: a training step of one worker, encoding throughput."""
    step_s: float               # one step of one worker (batch / workers pairs, forward + backward)
    tokens_per_s: float         # encoding, at the worker's threads (validation)
    eval_tokens_per_s: float    # encoding, at a test evaluation's threads (workers x CPUs per worker)
    trial_s: float = math.nan   # estimates from those, for this study
    test_s: float = math.nan    # one test evaluation (every test set), at its threads
    eval_threads: int = 1


def measure_model(cfg, threads: int, eval_threads: int) -> ModelCosts:
    """Time one training step of a worker and the encoding of real documents, for ``cfg``'s base model."""
    import torch

    from sbmoe_ray.runtime.precision import autocast
    from sbmoe_ray.train.inputs import token_inputs
    from sbmoe_ray.train.plan import encoder_model, objective_for
    from sbmoe_ray.train.step import WholeBatchStep

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data, device = token_inputs(cfg, torch.device("cpu")), torch.device("cpu")
        model, per_worker = encoder_model(cfg), cfg.optim.batch_size // cfg.scaling.num_workers
        step = WholeBatchStep(objective_for(cfg), device, cfg.memory.precision)
        pairs = data.train[:per_worker]
        queries, passages = data.query_input([q for q, _ in pairs]), data.passage_input([d for _, d in pairs])
        step(model, data.query_input([pairs[0][0]] * 2), data.passage_input([pairs[0][1]] * 2), True)  # warm-up
        start = time.perf_counter()
        step(model, queries, passages, True)
        step_s = time.perf_counter() - start
        model.eval()
        rates = []
        for n in (threads, eval_threads):
            torch.set_num_threads(n)
            with torch.no_grad(), autocast("cpu", cfg.memory.precision):
                start = time.perf_counter()
                model.embed_inputs(passages)
                rates.append(int(passages["attention_mask"].sum()) / (time.perf_counter() - start))
        return ModelCosts(step_s, *rates, eval_threads=eval_threads)
    finally:
        torch.set_num_threads(old)


def corpus_tokens(names: list[str], split: str, data_dir, base_model: str, max_length: int, query_max_length: int) -> int:
    """Every token a test evaluation encodes: each corpus's documents and judged queries, truncated."""
    from sbmoe_ray.model.backbones import load_tokenizer

    tokenizer = load_tokenizer(base_model)       # base models sharing a tokenizer (minilm-l3) count once
    key = (tuple(names), split, str(data_dir), tokenizer.name_or_path, max_length, query_max_length)
    if key not in _TOKENS:
        _TOKENS[key] = _count_tokens(tokenizer, names, split, data_dir, max_length, query_max_length)
    return _TOKENS[key]


def _count_tokens(tokenizer, names: list[str], split: str, data_dir, max_length: int, query_max_length: int) -> int:
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
    val_docs = (len({d for _, d in validation}) + cfg.data.validation_retrieval_docs) * cfg.model.max_length
    train_s = cfg.optim.epochs * (steps * costs.step_s + val_loss + val_docs / costs.tokens_per_s)
    return replace(costs, trial_s=TRIAL_OVERHEAD_S + TRAIN_OVERHEAD * crowding * train_s,
                   test_s=TEST_OVERHEAD * test_tokens / costs.eval_tokens_per_s + TEST_FIXED_S)


@dataclass
class Plan:
    """What stage 2 runs within the budget, and why."""
    budget_s: float
    spent_s: float
    seeds: int
    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    estimate_s: dict[str, float]          # stage 2 training, test phase, total with what was spent
    costs: dict[str, dict[str, float]]    # per base model
    cores: int

    def describe(self) -> str:
        est = self.estimate_s
        head = (f"[plan] budget {self.budget_s / 60:.0f} min, {self.spent_s / 60:.1f} min spent; stage 2 estimated "
                f"{est['training'] / 60:.1f} min training + {est['test'] / 60:.1f} min test phase = "
                f"{est['total'] / 60:.1f} min in all")
        if not self.dropped:
            return head + ": everything fits"
        gone = ", ".join(f"{e['base_model']} {e['role']} {e['stage1_group'] or 'baseline'}"
                         for e in self.dropped if e.get("role") != "seeds")
        seeds = [e for e in self.dropped if e.get("role") == "seeds"]
        return head + "; dropped to fit: " + "; ".join(
            ([f"replicates beyond {self.seeds}"] if seeds else []) + ([gone] if gone else [])) + \
            (" (over the budget even so: the baseline and the top configuration always run)"
             if est["total"] > self.budget_s else "")


def priority(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entries in the order they are dropped (first = dropped first): per base model the order
    ``promoted #1, control #1, promoted #2, ...`` read from its end, base models in turn."""
    per_model: dict[str, list[dict[str, Any]]] = {}
    for model in sorted({e["base_model"] for e in entries}):
        promoted = [e for e in entries if e["base_model"] == model and e["role"] == "promoted"]
        controls = [e for e in entries if e["base_model"] == model and e["role"] == "control"]
        order = [e for i in range(max(len(promoted), len(controls))) for e in (promoted[i:i + 1] + controls[i:i + 1])]
        per_model[model] = order[1:][::-1]            # the top promoted configuration is never dropped
    droppable = []
    while any(per_model.values()):
        for model in sorted(per_model):
            if per_model[model]:
                droppable.append(per_model[model].pop(0))
    return droppable


def make_plan(entries: list[dict[str, Any]], seeds: int, costs: dict[str, ModelCosts], budget_s: float,
              spent_s: float, cores: int) -> Plan:
    """Drop stage-2 work, least needed first, until the estimate fits the budget (see the module)."""
    kept, dropped = list(entries), []

    def estimate(kept: list[dict[str, Any]], seeds: int) -> dict[str, float]:
        training = sum(costs[e["base_model"]].trial_s for e in kept) * seeds
        models = {e["base_model"] for e in kept}      # the test phase runs as many at once as the cores hold
        test = sum(2 * seeds * costs[m].test_s / max(1, cores // costs[m].eval_threads) for m in models)
        return {"training": training, "test": test, "total": spent_s + training + test}

    if estimate(kept, seeds)["total"] > budget_s and seeds > 1:
        dropped.append({"role": "seeds", "seeds": seeds})
        seeds = 1
    for entry in priority(entries):
        if estimate(kept, seeds)["total"] <= budget_s:
            break
        kept.remove(entry)
        dropped.append(entry)
    return Plan(budget_s, spent_s, seeds, kept, dropped, estimate(kept, seeds),
                {m: asdict(c) for m, c in costs.items()}, cores)


def read_plan(folder: Path) -> Plan | None:
    """The plan of a stage 2 planned to a budget (``<study>/finetune``), else None."""
    path = Path(folder) / PLAN_FILE
    return Plan(**json.loads(path.read_text())) if path.is_file() else None


def load_or_plan(folder: Path, compute) -> Plan:
    """The plan written before (a resumed study runs it), else ``compute()`` written now."""
    plan, path = read_plan(folder), Path(folder) / PLAN_FILE
    if plan is not None:
        return plan
    plan = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(plan), indent=2))
    tmp.replace(path)
    return plan


def measured_costs(study, models, cores: int) -> dict[str, ModelCosts]:
    """Each base model's costs for this study, measured once per process (the forecast and the plan share them)."""
    from sbmoe_ray.train.launch import resolved
    from sbmoe_ray.train.testing import evaluation_cpus

    key = (str(study.study_dir), tuple(sorted(models)), cores)
    if key in _MEASURED:
        return _MEASURED[key]
    stage2, costs = study.finetune_study(), {}
    for model in sorted(models):
        cfg = resolved(stage2.trial_config({"base_model": model, "num_experts": 0}, "plan"))
        tokens = corpus_tokens(study.train.data.test_datasets, cfg.data.test_split,
                               cfg.data.data_dir, cfg.model.base_model, cfg.model.max_length, cfg.data.query_max_length)
        threads, eval_threads = max(1, int(cfg.scaling.cpus_per_worker)), max(1, int(evaluation_cpus(cfg)))
        costs[model] = estimate_model(cfg, measure_model(cfg, threads, eval_threads), tokens, cores)
        print(f"[plan] {model}: a training step {costs[model].step_s:.1f} s, encoding {costs[model].tokens_per_s:.0f} "
              f"tokens/s on {threads} thread(s), {costs[model].eval_tokens_per_s:.0f} on {eval_threads} -> a trial "
              f"~{costs[model].trial_s / 60:.1f} min, a test evaluation ~{costs[model].test_s / 60:.1f} min", flush=True)
    _MEASURED[key] = costs
    return costs


def plan_stage2(study, entries: list[dict[str, Any]], seeds: int, started: float, cores: int) -> Plan:
    """Plan stage 2 within ``study.budget_seconds()`` from each base model's costs measured here; the time
    spent counts from ``started`` (``time.monotonic()``) to the end of the measurements."""
    costs = measured_costs(study, {e["base_model"] for e in entries}, cores)
    return make_plan(entries, seeds, costs, study.budget_seconds(), time.monotonic() - started, cores)


def forecast(study, cores: int) -> tuple[str, bool]:
    """Before stage 1: stage 2 and the test phase as configured and at the least, against the budget, from
    costs measured now (so that a budget this machine cannot meet is said up front); and whether it fits."""
    from sbmoe_ray.model.backbones import hidden_size

    models = [str(m) for m in study.space["base_model"]]
    for model in models:
        hidden_size(model)                     # a clear error for an unknown or unreachable model, first
    entries = [{"base_model": m, "role": role, "stage1_group": f"{role} #{i + 1}"} for m in models
               for role, n in (("promoted", study.promote), ("control", study.finetune.controls)) for i in range(n)]
    entries += [{"base_model": m, "role": "baseline", "stage1_group": None} for m in models]
    seeds, costs = study.finetune.replicates()[0], measured_costs(study, models, cores)
    full = make_plan(entries, seeds, costs, math.inf, 0.0, cores).estimate_s["total"]
    least = make_plan(entries, seeds, costs, 0.0, 0.0, cores).estimate_s["total"]
    budget = study.budget_seconds()
    return (f"[plan] before stage 1: stage 2 and its test phase estimated {full / 60:.0f} min as configured, "
            f"{least / 60:.0f} min at the least (the baseline and the top configuration of each base model, 1 seed); "
            f"budget {budget / 60:.0f} min for the whole command, the caches and stage 1 first", least < budget)
