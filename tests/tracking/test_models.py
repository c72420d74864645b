"""The chosen model in MLflow: an exported folder logged as a pyfunc on its run and registered with an
alias; ``mlflow.pyfunc.load_model("models:/<name>@champion")`` encodes queries and documents like the
exported model, and its test metrics are linked to the logged model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from sbmoe_ray.export.sentence_transformer import export_folder
from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder
from sbmoe_ray.tracking.models import log_retriever


def test_a_registered_retriever_loads_by_alias_and_encodes_queries_and_documents(tiny_bert, tokenizer, tmp_path):
    import mlflow
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    config = ModelConfig(num_experts=3, top_k=1, pooling="mean", normalize=True, max_length=64)
    folder = export_folder(build_bi_encoder(config, tiny_bert).eval(), config, tokenizer, tmp_path / "m", "# card\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("models", artifact_location=str(tmp_path / "art"))).info.run_id
    version, model_id = log_retriever(uri, run_id, folder, "study-m", "chosen", {"scifact.ndcg_at_10": 0.5})

    mlflow.set_tracking_uri(uri)
    champion = client.get_model_version_by_alias("study-m", "champion")
    assert str(champion.version) == version and champion.run_id == run_id
    model = mlflow.pyfunc.load_model("models:/study-m@champion")
    texts = ["what causes fever?", "Fever is a rise in body temperature."]
    expected = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu").encode(texts)
    assert np.allclose(model.predict(texts), expected, atol=1e-6)
    assert np.allclose(model.predict(pd.DataFrame({"text": texts})), expected, atol=1e-6)
    logged = mlflow.get_logged_model(model_id)
    assert logged.source_run_id == run_id
    assert {m.key: m.value for m in logged.metrics} == {"scifact.ndcg_at_10": 0.5}
