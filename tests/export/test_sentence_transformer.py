"""An exported model loads in sentence-transformers without sbmoe-ray's code and is the same retriever:
embeddings with cosine >= 0.9999 to the toolkit's own, and the same nDCG@10 (1e-4) on a real test set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbmoe_ray.data.beir import identical_id_queries, load_dataset
from sbmoe_ray.evaluation.dense import EncodeSettings, encode, evaluate, exact_search
from sbmoe_ray.evaluation.metrics import evaluate_run
from sbmoe_ray.export.sentence_transformer import export_folder
from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder


@pytest.mark.parametrize("experts,inference", [(4, 1), (3, "all"), (0, None)])
def test_the_exported_model_encodes_and_retrieves_like_the_toolkit(tiny_bert, tokenizer, data_dir, tmp_path,
                                                                   experts, inference):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    config = ModelConfig(num_experts=experts, top_k=2 if experts else 1, inference_top_k=inference, pooling="mean",
                         normalize=True, max_length=128)
    model = build_bi_encoder(config, tiny_bert).eval()
    if model.head is not None:                        # a trained-looking head: experts that matter
        for expert in model.head.experts:
            torch.nn.init.normal_(expert[-1].weight, std=0.5)
    out = export_folder(model, config, tokenizer, tmp_path / "exported", card="# card\n")
    loaded = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    assert (out / "sbmoe_module.py").is_file() == bool(experts) and (out / "README.md").read_text() == "# card\n"

    dataset = load_dataset("adi", "test", data_dir=data_dir)
    settings = EncodeSettings(batch_size=16, max_length=128, progress=False)
    texts = [d.full_text for d in dataset.corpus.values()]
    ours = encode(model, tokenizer, texts, settings)
    theirs = loaded.encode(texts, batch_size=16, convert_to_numpy=True)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.9999

    queries = loaded.encode(list(dataset.queries.values()), batch_size=16, convert_to_numpy=True)
    run = exact_search(theirs, list(dataset.corpus), queries, list(dataset.queries))
    reference = evaluate(model, tokenizer, dataset, settings).metrics.means["ndcg@10"]
    scored = evaluate_run(dataset.qrels, run, ignore_identical_ids=identical_id_queries(dataset, "auto"))
    assert scored.means["ndcg@10"] == pytest.approx(reference, abs=1e-4)
