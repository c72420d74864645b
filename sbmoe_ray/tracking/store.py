"""The MLflow tracking store: checked before any work, and what MLflow's calls take (flat params, metrics).

All logging happens in the driver, so a single process writes the store: the embedded ``sqlite:///mlflow.db``
is safe even with concurrent trials. (An ``mlflow server`` is what a cluster uses, so the UI and every node
see one store; the ``./mlruns`` file store is refused by MLflow 3.)
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sbmoe_ray.errors import ConfigError
from sbmoe_ray.evaluation.metrics import mlflow_name


def check_tracking_uri(uri: str) -> None:
    """Fail before any trial starts when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            raise ConfigError(f"config.tracking_uri={uri!r}: the MLflow server is unreachable "
                              f"({getattr(exc, 'reason', exc)}); start it (mlflow server --host 127.0.0.1 "
                              "--port 5000) or use sqlite:///mlflow.db") from None
        raise ConfigError(f"config.tracking_uri={uri!r}: /health did not answer 200")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not folder.is_dir():
            raise ConfigError(f"config.tracking_uri={uri!r}: folder {folder} does not exist")
        return
    raise ConfigError(f"config.tracking_uri={uri!r}: use sqlite:///<file>.db or http(s)://<mlflow server> "
                      "(the ./mlruns file store is refused by MLflow 3)")


def artifact_location(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside an embedded store (``<db folder>/mlartifacts``, an absolute
    location recorded in the experiment, so the UI finds them from any folder), not the working directory's
    ``./mlruns`` (MLflow's default for a database store); an MLflow server decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent / "mlartifacts").as_uri()
    return None


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested values as MLflow params: dotted keys, values as text of at most 500 characters."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


def metric_entities(metrics: dict[str, Any], step: int) -> list:
    """MLflow metrics of one report: the finite numbers, MLflow-named, at ``step``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(mlflow_name(k), float(v), now, step) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
