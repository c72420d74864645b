"""The depth ladder's costs, side by side in one run: a training step at depth 1, 2 and all; a test phase's
encoding at depth 1 (the top layer on cached states) against every layer; the state cache's build rate, size on
disk and the process's peak memory.

MiniLM (all-MiniLM-L6-v2), SciFact train pairs, batch 64 (64 queries + 64 passages at max length 256), one
process at ``--threads`` threads, ``precision: auto`` (bf16 where native), AdamW with the study's two learning
rates. Steps are interleaved over ``--rounds`` rounds (1, 2, all, 1, 2, all, ...) and their medians compared,
the first step of each depth being warm-up. The test-phase part encodes ``--docs`` SciFact documents: the state
cache built for them (timed), then the depth-1 model through it against the whole model by tokens.

    python bench/depth_ladder.py [--rounds 3] [--steps 3] [--docs 800] [--threads 2] [--data-dir DIR] [--gpu]

With ``--gpu`` (``bench/gpu_check.sh``) the steps and the encodings run on the first CUDA device, bf16, and each
figure is also given as model FLOP/s and MFU against the GPU's bf16 matmul ceiling measured here.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.evaluation.dense import EncodeSettings, encode
from sbmoe_ray.evaluation.state_cache import LayerStateCache, builds, embed_states
from sbmoe_ray.model.backbones import load_tokenizer
from sbmoe_ray.model.bi_encoder import ModelConfig
from sbmoe_ray.runtime.precision import resolve_precision
from sbmoe_ray.stages.costs import _inputs_at_depth
from sbmoe_ray.train import TrainConfig, resolved
from sbmoe_ray.train.config import DataConfig, OptimConfig, ScalingConfig
from sbmoe_ray.train.inputs import token_inputs
from sbmoe_ray.train.loop import build_optimizer
from sbmoe_ray.train.routes import encoder_model, objective_for
from sbmoe_ray.train.step import WholeBatchStep

DEPTHS = (1, 2, "all")


def config(depth, data_dir: str | None, threads: int, gpu: bool = False) -> TrainConfig:
    return resolved(TrainConfig(model=ModelConfig(base_model="minilm"),
                                data=DataConfig(train_dataset="scifact", test_datasets=[], data_dir=data_dir),
                                optim=OptimConfig(encoder_lr=2e-5, moe_lr=1e-3, trained_layers=depth, batch_size=64),
                                scaling=ScalingConfig(num_workers=1, cpus_per_worker=float(threads), use_gpu=gpu)))


def machine() -> str:
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_timer(depth, args):
    cfg = config(depth, args.data_dir, args.threads, args.gpu)
    device = torch.device("cuda" if args.gpu else "cpu")
    data = token_inputs(cfg, device)
    model = encoder_model(cfg).to(device)
    optimizer, scheduler = build_optimizer(model, cfg, 1000)
    step = WholeBatchStep(objective_for(cfg), device, cfg.memory.precision)
    pairs = data.train[:64]
    q = _inputs_at_depth(model, data.query_input([p[0] for p in pairs]), cfg.depth, cfg.memory.precision)
    p = _inputs_at_depth(model, data.training_passages([p[1] for p in pairs]), cfg.depth, cfg.memory.precision)

    def one() -> float:
        model.train(True)
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step(model, q, p, True)
        optimizer.step()
        scheduler.step()
        _sync(device)
        return time.perf_counter() - start
    one()                                              # warm-up
    return one


def gpu_utilisation(med: dict, args) -> dict:
    """Model FLOP/s of each depth's step against the GPU's bf16 matmul ceiling, measured here (nanoGPT's MFU)."""
    from sbmoe_ray.runtime.hardware import encoder_flops_per_token, matmul_ceiling

    cfg = config("all", args.data_dir, args.threads, True)
    model = encoder_model(cfg)
    tokens = 64 * (256 + 40)                                     # the batch's passages and queries, at most
    per_token = encoder_flops_per_token(model.backbone, 256)
    layers = model.backbone.config.num_hidden_layers
    ceiling = matmul_ceiling("bf16", "cuda")
    out = {"gpu": torch.cuda.get_device_name(0), "bf16_ceiling_tflops": ceiling / 1e12}
    for d, seconds in med.items():
        share = 1.0 if d == "all" else d / layers
        flops = 3 * share * per_token * tokens
        out[f"mfu_depth_{d}"] = flops / seconds / ceiling
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--docs", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--gpu", action="store_true", help="on the first CUDA device (bf16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = resolve_precision("auto", "cuda" if args.gpu else "cpu")
    device = "cuda" if args.gpu else "cpu"
    print(f"machine: {machine()}; precision {precision}", flush=True)

    timers = {d: step_timer(d, args) for d in DEPTHS}
    times = {d: [] for d in DEPTHS}
    for r in range(args.rounds):
        for d in DEPTHS:
            times[d] += [timers[d]() for _ in range(args.steps)]
        print(f"round {r + 1}: " + ", ".join(f"{d}: {statistics.median(times[d]):.2f} s" for d in DEPTHS), flush=True)
    med = {d: statistics.median(times[d]) for d in DEPTHS}

    cfg = config(1, args.data_dir, args.threads, args.gpu)
    dataset = load_dataset("scifact", "test", cfg.data.data_dir)
    texts = [d.full_text for d in list(dataset.corpus.values())[: args.docs]]
    settings = EncodeSettings(batch_size=256 if args.gpu else 32, max_length=cfg.model.max_length, precision=precision,
                              device=device, progress=False)
    with tempfile.TemporaryDirectory() as root:
        cache = LayerStateCache(Path(root), cfg.model, settings, 1)
        states = cache.get(texts, cfg.model.max_length)
        built = builds(Path(root))[-1]
        size = sum(f.stat().st_size for f in cache.path(texts, cfg.model.max_length).iterdir())
        model = encoder_model(cfg).to(device)
        tokenizer = load_tokenizer("minilm")
        encode(model, tokenizer, texts[:64], settings)                       # warm-up
        start = time.perf_counter()
        embed_states(model, states, settings)
        top = time.perf_counter() - start
        start = time.perf_counter()
        encode(model, tokenizer, texts, settings)
        whole = time.perf_counter() - start
    tokens = built["tokens"]
    result = {
        "machine": machine(), "precision": precision, "threads": args.threads,
        "step_s": {str(d): med[d] for d in DEPTHS},
        "step_ratio_all_over": {str(d): med["all"] / med[d] for d in DEPTHS},
        "test_encoding": {"docs": len(texts), "tokens": tokens, "depth1_s": top, "all_s": whole,
                          "ratio": whole / top, "all_docs_per_s": len(texts) / whole},
        "state_cache": {"build_s": built["seconds"], "tokens_per_s": tokens / built["seconds"],
                        "bytes": size, "bytes_per_token": size / tokens},
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if args.gpu:
        result.update(gpu_utilisation(med, args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
