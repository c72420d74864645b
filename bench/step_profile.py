"""Where a depth-k training step and a depth-k test-phase encoding spend their time, by operator
(``torch.profiler``): is the step at the machine's matmul ceiling, and what else does it pay for?

MiniLM, SciFact train pairs, batch 64 (as ``bench/depth_ladder.py``); the encoding runs the top ``--depth`` layers
of the same model over the cached states of ``--docs`` SciFact documents, batches of 32 longest first (as the test
phase does). Prints the step's seconds (median of ``--steps``), the encoding's tokens per second, and the
operators that took the most time in each.

    python bench/step_profile.py [--depth 1] [--steps 4] [--docs 600] [--threads 2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from depth_ladder import config, machine, step_timer
from torch.profiler import ProfilerActivity, profile

from sbmoe_ray.data.beir import load_dataset
from sbmoe_ray.evaluation.dense import EncodeSettings
from sbmoe_ray.evaluation.state_cache import LayerStateCache, embed_states
from sbmoe_ray.runtime.precision import resolve_precision
from sbmoe_ray.train.routes import encoder_model


def top_ops(run, rows: int) -> str:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = resolve_precision("auto", "cpu")
    print(f"machine: {machine()}; precision {precision}; depth {args.depth}", flush=True)

    one = step_timer(args.depth, argparse.Namespace(data_dir=args.data_dir, threads=args.threads, gpu=False))
    seconds = [one() for _ in range(args.steps)]
    print(f"training step (batch 64): {statistics.median(seconds):.2f} s median of {seconds}")
    print(top_ops(one, args.rows))

    cfg = config(args.depth, args.data_dir, args.threads)
    dataset = load_dataset("scifact", "test", cfg.data.data_dir)
    texts = [d.full_text for d in list(dataset.corpus.values())[: args.docs]]
    settings = EncodeSettings(batch_size=32, max_length=cfg.model.max_length, precision=precision, device="cpu",
                              progress=False)
    with tempfile.TemporaryDirectory() as root:
        states = LayerStateCache(Path(root), cfg.model, settings, args.depth).get(texts, cfg.model.max_length)
        model = encoder_model(cfg)
        embed_states(model, states, settings)                                    # warm-up
        start = time.perf_counter()
        embed_states(model, states, settings)
        took = time.perf_counter() - start
        tokens = int(states.offsets[-1])
        print(f"test-phase encoding, top {args.depth} layer(s): {tokens} tokens of {len(texts)} documents in "
              f"{took:.2f} s = {tokens / took:.0f} tokens/s")
        print(top_ops(lambda: embed_states(model, states, settings), args.rows))


if __name__ == "__main__":
    main()
