"""Training passage length against step cost (issue 22, item 7: converged stage 2 needs more steps in the same
budget). SciFact's training passages are 97 % real tokens at 256 (80 % are cut there), so padding is not where
a step's time goes: the passage length is. This times one training step of plain MiniLM fine-tuning (our
loop, one process, batch 64, bf16 where native else fp32, the machine's threads) with training passages cut to
each length, the lengths interleaved over rounds (these VMs drift ±30 % between runs, not within one), and
prints the median, the ratio to 256 and the share of the matmul ceiling. What a shorter length costs in
nDCG is measured apart, by training with it and testing at full length (docs/results/2026-12-03-passage-length.md).

    python bench/passage_length.py [--lengths 256 192 128] [--rounds 2] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics

from train_throughput import ours, settings, stage2_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 192, 128])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    from sbmoe_ray.runtime.hardware import describe_machine

    base = stage2_step(args.data_dir)
    print(f"machine: {describe_machine()}; MiniLM N=0, batch 64, queries <= 64 tokens, median s/step of "
          f"{args.steps} steps (first excluded), {args.rounds} interleaved rounds", flush=True)
    times: dict[int, list[float]] = {n: [] for n in args.lengths}
    used: dict[int, list[float]] = {n: [] for n in args.lengths}
    for _ in range(args.rounds):
        for length in args.lengths:
            t, u = ours(settings(base, train_passage_max_length=length), args.steps)
            times[length].append(t)
            used[length].append(u)
    first = statistics.median(times[args.lengths[0]])
    for length in args.lengths:
        t = statistics.median(times[length])
        print(f"   passages <= {length:3d} tokens  {t:6.2f} s/step  {first / t:5.2f}x  "
              f"{100 * statistics.median(used[length]):.0f}% of the ceiling", flush=True)


if __name__ == "__main__":
    main()
