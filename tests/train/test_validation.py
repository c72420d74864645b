"""The validation objective counts every held-out pair once, whatever the batch size, the chunking or the
load-balancing coefficient, and equals the loss taken directly over all held-out pairs (the reference)."""

from __future__ import annotations

from dataclasses import replace

import torch

from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder
from sbmoe_ray.model.losses import InBatchNegativesLoss
from sbmoe_ray.train.config import TrainConfig
from sbmoe_ray.train.inputs import PairData
from sbmoe_ray.train.validation import validate, validate_pairs


def held_out(num_queries: int = 13, hidden: int = 16):
    """A head-only SB-MoE bi-encoder and cached pooled embeddings of 13 held-out queries, one with 2 positives."""
    torch.manual_seed(0)
    config = ModelConfig(base_model="none", num_experts=3, top_k=1, max_length=32, pooling="mean", normalize=True)
    model = build_bi_encoder(config, hidden_size=hidden).eval()
    queries = {f"q{i}": torch.randn(hidden) for i in range(num_queries)}
    docs = {f"d{i}": torch.randn(hidden) for i in range(num_queries + 1)}
    pairs = [(f"q{i}", f"d{i}") for i in range(num_queries)] + [("q0", f"d{num_queries}")]
    data = PairData([], pairs, lambda ids: torch.stack([queries[i] for i in ids]),
                    lambda ids: torch.stack([docs[i] for i in ids]), dataset=None)
    return model, data


def test_every_held_out_pair_counts_once_and_equals_the_loss_over_all_of_them():
    model, data = held_out()
    criterion = InBatchNegativesLoss(0.05)
    cfg = TrainConfig()
    metrics = validate(model, data, criterion, cfg, torch.device("cpu"))
    assert metrics["val_pairs"] == 14 and metrics["val_queries"] == 13       # 14 is no multiple of batch 64 or 4
    with torch.inference_mode():
        q = model.embed_inputs(data.query_input([q for q, _ in data.validation]))[0]
        d = model.embed_inputs(data.passage_input([d for _, d in data.validation]))[0]
        reference, accuracy = criterion(q, d)
    assert abs(metrics["val_loss"] - reference.item()) < 1e-6 and metrics["val_accuracy"] == accuracy.item()
    assert 0.0 <= metrics["val_load.load_cv"] and "val_load.load_max_over_mean" in metrics


def test_each_held_out_pairs_loss_and_accuracy_average_to_the_objective():
    model, data = held_out()
    metrics, pairs = validate_pairs(model, data, InBatchNegativesLoss(0.05), TrainConfig(), torch.device("cpu"))
    assert len(pairs["val_loss"]) == len(pairs["val_accuracy"]) == 14
    assert abs(sum(pairs["val_loss"]) / 14 - metrics["val_loss"]) < 1e-5
    assert abs(sum(pairs["val_accuracy"]) / 14 - metrics["val_accuracy"]) < 1e-6
    assert len(set(round(v, 4) for v in pairs["val_loss"])) > 1               # per pair, not the mean repeated


def test_the_objective_does_not_depend_on_batch_size_chunks_or_the_load_balancing_coefficient():
    model, data = held_out()
    criterion, cpu = InBatchNegativesLoss(0.05), torch.device("cpu")
    base = TrainConfig()
    values = set()
    for batch, chunk, balance in ((64, 32, 0.01), (4, 3, 0.0), (8, 1, 1.0)):
        cfg = replace(base, optim=replace(base.optim, batch_size=batch),
                      memory=replace(base.memory, eval_batch_size=chunk), loss=replace(base.loss, load_balancing=balance))
        values.add(round(validate(model, data, criterion, cfg, cpu)["val_loss"], 6))
    assert len(values) == 1


def test_training_passages_are_cut_to_their_own_length_while_validation_sees_them_whole(data_dir):
    from sbmoe_ray.train.inputs import token_inputs

    cfg = TrainConfig.from_dict({"model": {"base_model": "minilm", "max_length": 256},
                                 "data": {"train_dataset": "scifact", "data_dir": str(data_dir),
                                          "train_passage_max_length": 32, "validation_fraction": 0.2}})
    data = token_inputs(cfg, torch.device("cpu"))
    ids = [d for _, d in data.train[:8]]
    assert data.training_passages(ids)["input_ids"].shape[1] == 32
    assert data.passage_input(ids)["input_ids"].shape[1] > 32                  # validated and tested whole
    whole = token_inputs(TrainConfig.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"],
                                                                           "train_passage_max_length": None}}),
                         torch.device("cpu"))
    assert torch.equal(whole.training_passages(ids)["input_ids"], data.passage_input(ids)["input_ids"])


def _validate_as_worker(rank: int, world: int, root: str, port: int, out: str) -> None:
    """One of ``world`` gloo workers (world 1: no process group) validating the same model on the same data."""
    import json

    from sbmoe_ray.data.beir import load_dataset

    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
    model, _ = held_out()
    dataset = load_dataset(root, "train", None)
    table = {i: torch.randn(16, generator=torch.Generator().manual_seed(n))
             for n, i in enumerate(sorted(dataset.queries) + sorted(dataset.corpus))}
    pairs = [("q0", "d0"), ("q1", "d1"), ("q2", "d2"), ("q3", "d3"), ("q0", "d4")]
    data = PairData([], pairs, lambda ids: torch.stack([table[i] for i in ids]),
                    lambda ids: torch.stack([table[i] for i in ids]), dataset=dataset)
    cfg = TrainConfig.from_dict({"data": {"validation_retrieval_docs": 5}, "memory": {"eval_batch_size": 2}})
    metrics = validate(model, data, InBatchNegativesLoss(0.05), cfg, torch.device("cpu"), rank, world)
    with open(f"{out}.{world}.{rank}", "w") as f:
        json.dump(metrics, f)


def test_two_workers_each_embedding_half_the_held_out_texts_get_the_metrics_of_one_worker(tmp_path, tiny_dataset):
    import json

    from helpers import free_port

    port = free_port()
    out = str(tmp_path / "metrics")
    _validate_as_worker(0, 1, str(tiny_dataset), port, out)
    # spawned, not forked: a fork of a process whose OpenMP threads have run can hang in the child
    torch.multiprocessing.start_processes(_validate_as_worker, args=(2, str(tiny_dataset), port, out), nprocs=2,
                                          start_method="spawn")
    one, *two = (json.loads(open(f"{out}.{w}.{r}").read()) for w, r in ((1, 0), (2, 0), (2, 1)))
    assert "val_ndcg@10" in one and "val_load.load_cv" in one and one["val_queries"] == 4
    for metrics in two:
        assert metrics.keys() == one.keys()
        for key, value in one.items():
            assert abs(metrics[key] - value) < 1e-6, key
