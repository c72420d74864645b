"""Zero-shot retrieval: our evaluator vs the reference pipeline, same model, same files, same machine.

Reference: sentence-transformers ``encode`` through BEIR's ``SentenceBERT`` + ``DenseRetrievalExactSearch``
(cosine), scored by BEIR's ``EvaluateRetrieval``, data read by BEIR's ``GenericDataLoader``.
Ours: ``sbmoe_ray.evaluation.dense.evaluate`` in fp32 and in bf16 autocast.
Each pipeline runs in a fresh subprocess (oneDNN caches kernels per shape, which would favour whichever
pipeline runs second). Prints the machine and its measured matmul ceilings (fp32, bf16), then texts/s
(corpus + queries, end to end), nDCG@10, ratios to the reference, and our encoder's model FLOP/s as a
share of the ceiling at its precision (nanoGPT's MFU).

    python bench/encode_throughput.py --dataset scifact [--dataset nfcorpus] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def run_reference(dataset: str, data_dir: str | None, model: str) -> dict:
    from beir.datasets.data_loader import GenericDataLoader
    from beir.retrieval import models
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    from sbmoe_ray.data.root import locate_dataset
    from sbmoe_ray.model.backbones import resolve_model

    corpus, queries, qrels = GenericDataLoader(str(locate_dataset(dataset, data_dir))).load(split="test")
    retriever = EvaluateRetrieval(DenseRetrievalExactSearch(models.SentenceBERT(resolve_model(model).source),
                                                            batch_size=32), score_function="cos_sim")
    start = time.perf_counter()
    results = retriever.retrieve(corpus, queries)
    seconds = time.perf_counter() - start
    ndcg, _, recall, _ = EvaluateRetrieval.evaluate(qrels, results, [10, 100])
    return {"texts": len(corpus) + len(queries), "seconds": seconds, "ndcg@10": ndcg["NDCG@10"],
            "recall@100": recall["Recall@100"]}


def run_ours(dataset: str, data_dir: str | None, model: str, precision: str) -> dict:
    from sbmoe_ray.data.beir import load_dataset
    from sbmoe_ray.evaluation.dense import EncodeSettings, evaluate
    from sbmoe_ray.model.backbones import load_tokenizer
    from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder
    from sbmoe_ray.runtime.hardware import encoder_flops_per_token, utilisation

    config = ModelConfig(base_model=model).resolved()
    ds = load_dataset(dataset, "test", data_dir)
    model_, tokenizer = build_bi_encoder(config), load_tokenizer(model)
    result = evaluate(model_, tokenizer, ds, EncodeSettings(max_length=config.max_length, precision=precision,
                                                            progress=False))
    texts = [d.full_text for d in ds.corpus.values()] + list(ds.queries.values())
    lengths = [len(x) for x in tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]]
    flops = encoder_flops_per_token(model_.backbone, sum(lengths) // len(lengths)) * sum(lengths)
    seconds = result.seconds["encode_corpus"] + result.seconds["encode_queries"]
    return {"texts": len(texts), "seconds": result.seconds["total"], "ndcg@10": result.metrics.means["ndcg@10"],
            "recall@100": result.metrics.means["recall@100"], "tflops": flops / seconds / 1e12,
            "utilisation": utilisation(flops, seconds, precision)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)   # internal: one pipeline
    args = parser.parse_args()
    datasets = args.dataset or ["scifact"]
    if args.pipeline:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        name = datasets[0]
        out = (run_reference(name, args.data_dir, args.model) if args.pipeline == "reference"
               else run_ours(name, args.data_dir, args.model, args.pipeline.removeprefix("ours-")))
        print("RESULT " + json.dumps(out))
        return
    from sbmoe_ray.runtime.hardware import describe_machine, matmul_ceiling

    pipelines = ["reference", "ours-fp32", "ours-bf16"]
    print(f"machine: {describe_machine()}")
    print(f"matmul ceiling (1024², all threads): fp32 {matmul_ceiling('fp32') / 1e9:.0f} GFLOP/s, "
          f"bf16 {matmul_ceiling('bf16') / 1e9:.0f} GFLOP/s", flush=True)
    print(f"{'dataset':10} {'pipeline':12} {'texts/s':>8} {'seconds':>8} {'nDCG@10':>8} {'R@100':>7} "
          f"{'speed-up':>8} {'ΔnDCG@10':>9} {'TFLOP/s':>8} {'of ceiling':>10}")
    for name in datasets:
        rows = {}
        for pipeline in pipelines:
            cmd = [sys.executable, __file__, "--pipeline", pipeline, "--dataset", name, "--model", args.model]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{pipeline} on {name} failed:\n{proc.stderr[-3000:]}")
            rows[pipeline] = r = json.loads(line.removeprefix("RESULT "))
            ref = rows["reference"]
            print(f"{name:10} {pipeline:12} {r['texts'] / r['seconds']:8.1f} {r['seconds']:8.1f} "
                  f"{r['ndcg@10']:8.4f} {r['recall@100']:7.4f} {ref['seconds'] / r['seconds']:7.2f}x "
                  f"{r['ndcg@10'] - ref['ndcg@10']:+9.4f}"
                  + (f" {r['tflops']:8.3f} {100 * r['utilisation']:9.0f}%" if "tflops" in r else ""), flush=True)


if __name__ == "__main__":
    main()
