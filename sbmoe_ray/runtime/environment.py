"""What a run's numbers may depend on besides its config: package versions, the code's commit, Python."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("sbmoe-ray", "torch", "transformers", "ray", "optuna", "mlflow", "faiss-cpu", "beir")


def git_commit() -> str:
    """The commit of the checkout the package runs from ("unknown" for an installed wheel)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The installed version of each of ``packages`` (those not installed are left out)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def environment() -> dict[str, object]:
    return {"version": package_versions(), "git_commit": git_commit(), "python": sys.version.split()[0]}
