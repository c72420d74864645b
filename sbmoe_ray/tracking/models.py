"""A study's chosen models in MLflow: each exported folder logged as a pyfunc model on its trial's run,
registered under ``<study>-<base model>`` with an alias (``champion``: the configuration the answer chose;
``baseline``: its baseline), and the trial's test metrics linked to the logged model (MLflow 3's model
metrics). ``mlflow.pyfunc.load_model("models:/<name>@champion")`` then encodes texts anywhere
(:mod:`sbmoe_ray.tracking.retriever_pyfunc`)."""

from __future__ import annotations

from pathlib import Path

PYFUNC_FILE = Path(__file__).with_name("retriever_pyfunc.py")
ALIASES = {"chosen": "champion", "baseline": "baseline"}
REQUIREMENTS = ["mlflow>=3", "sentence-transformers>=5", "torch"]


def registered_name(study: str, base_model: str) -> str:
    return f"{study}-{Path(base_model).name}"


def log_retriever(tracking_uri: str, run_id: str, folder: Path, name: str, role: str,
                  metrics: dict[str, float]) -> tuple[str, str]:
    """Log ``folder`` as a pyfunc on ``run_id``, register it as ``name`` with the role's alias; the registered
    version and the logged model's id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name=f"retriever-{role}", python_model=str(PYFUNC_FILE),
                                       artifacts={"model": str(folder)}, pip_requirements=REQUIREMENTS,
                                       registered_model_name=name)
        if metrics:
            mlflow.log_metrics(metrics, model_id=info.model_id)
    version = str(info.registered_model_version)
    MlflowClient(tracking_uri).set_registered_model_alias(name, ALIASES[role], version)
    return version, info.model_id
