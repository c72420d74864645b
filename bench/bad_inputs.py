"""The bad-input cases of ``tests/stages/test_bad_inputs.py`` as a user meets them: each a fresh ``sbmoe study``
process against an existing study, timed from the command's start (imports included), as a markdown table.

    python bench/bad_inputs.py [--out docs/results/bad-inputs.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from stages.test_bad_inputs import CASES, free_port, snapshot  # noqa: E402

from helpers import bad_input_assets, record_existing_study, write_study  # noqa: E402


def existing_study(root: Path) -> tuple[Path, dict]:
    from sbmoe_ray.model.backbones import load_tokenizer

    assets = bad_input_assets(root, load_tokenizer("minilm"))
    work = root / "work"
    work.mkdir()
    config = write_study(work, assets)
    record_existing_study(config)
    (work / "data-root").mkdir()
    return config, assets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    config, assets = existing_study(root)
    work = config.parent
    env = {**os.environ, "SBMOE_DATA_DIR": str(work / "data-root")}
    rows = ["| case | exit | seconds | the message (start) | study unchanged |", "| --- | --- | --- | --- | --- |"]
    for name, (arguments, _) in sorted(CASES.items()):
        arguments = [a.format(port=free_port(), data=assets["data"], latin1=assets["latin1"],
                              overlap=assets["overlap"]) for a in arguments]
        before = snapshot(work)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "sbmoe_ray.cli", "study", "--config", str(config), *arguments],
                              capture_output=True, text=True, env=env, timeout=300)
        seconds = time.monotonic() - started
        lines = [line for line in proc.stderr.splitlines() if line.startswith(("sbmoe: error", "  "))]
        message = " / ".join(lines).replace(str(root), "…").replace("|", "\\|")[:200]
        rows.append(f"| {name} | {proc.returncode} | {seconds:.1f} | `{message}` | "
                    f"{'yes' if snapshot(work) == before else 'NO'} |")
    table = "\n".join(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
