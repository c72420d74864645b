"""Machine CPU of a command, by kind of process: where a study's or a test's CPU goes when most of it is spent in
Ray's processes (workers, Train's controller and helper actors), which are not the command's children.

Samples the user + system time of every process on the machine from ``/proc`` while the command runs (every
``--interval`` s; a process that lives less than that is missed; run nothing else meanwhile) and sums the growth
per process kind: Ray's process title (``ray::RayTrainWorker``, ``ray::TrainController``, ``ray::IDLE``...) or the
first words of the command line. Linux only.

    python bench/cpu_by_process.py [--interval 0.2] [--top 25] -- COMMAND [ARGS...]

e.g. ``python bench/cpu_by_process.py -- .venv/bin/python -m pytest -q tests/stages/test_two_stage.py``.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[int, tuple[float, str]]:
    """Every process's CPU seconds so far and its command line (Ray renames its workers ``ray::...``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / TICKS, command)
    return found


def kind(command: str) -> str:
    if command.startswith("ray::"):
        return command.split()[0]
    words = command.split()
    return " ".join(Path(w).name if i == 0 else w for i, w in enumerate(words[:3]))[:90] or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    before = snapshot()
    last: dict[int, tuple[float, str]] = {}
    start = time.monotonic()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        for pid, (cpu, line) in snapshot().items():
            known = last.get(pid)
            last[pid] = (cpu, line if line.startswith("ray::") or not known else known[1])
        time.sleep(args.interval)
    wall = time.monotonic() - start
    seconds, count = collections.Counter(), collections.Counter()
    for pid, (cpu, line) in last.items():
        grown = cpu - before.get(pid, (0.0, ""))[0]
        if grown > 0:
            seconds[kind(line)] += grown
            count[kind(line)] += 1
    print(f"exit {proc.returncode}; {wall:.1f} s wall, {sum(seconds.values()):.1f} s of CPU in sampled processes")
    print(f"{'CPU s':>8} {'procs':>5}  kind")
    for name, cpu in seconds.most_common(args.top):
        print(f"{cpu:8.1f} {count[name]:5d}  {name}")


if __name__ == "__main__":
    main()
