"""``sbmoe derive TEACHER --layers L``: build the small base encoder ``<teacher>-l<L>-distilled`` once (cached by
content), then show its zero-shot nDCG@10 beside the plain layer cut's."""

from __future__ import annotations

import argparse


def cmd_derive(args: argparse.Namespace) -> None:
    from sbmoe_ray.derive.distill import Recipe, derive
    from sbmoe_ray.errors import ConfigError
    from sbmoe_ray.model.backbones import BASE_MODELS

    recipe = Recipe(teacher=args.teacher, layers=args.layers, dataset=args.dataset, epochs=args.epochs)
    if recipe.name not in BASE_MODELS:
        raise ConfigError(f"sbmoe derive {args.teacher} --layers {args.layers}: {recipe.name!r} is not a derived base "
                          f"model the toolkit names; allowed: "
                          f"{[n for n, s in BASE_MODELS.items() if s.source.startswith('derived:')]}")
    folder = derive(recipe, args.data_dir)
    print(f"{recipe.name}: {folder}")
    if args.evaluate:
        _compare(recipe, args.evaluate, args.data_dir)


def _compare(recipe, datasets: list[str], data_dir: str | None) -> None:
    """Zero-shot nDCG@10 of the derived model, the plain cut and the teacher on ``datasets``."""
    from sbmoe_ray.data.beir import load_dataset
    from sbmoe_ray.evaluation.dense import EncodeSettings, evaluate
    from sbmoe_ray.model.backbones import load_tokenizer
    from sbmoe_ray.model.bi_encoder import ModelConfig, build_bi_encoder
    from sbmoe_ray.runtime.precision import resolve_precision

    cut = f"{recipe.teacher}-l{recipe.layers}"
    for name in datasets:
        dataset = load_dataset(name, "test", data_dir)
        for model_name in (recipe.name, cut, recipe.teacher):
            config = ModelConfig(base_model=model_name).resolved()
            settings = EncodeSettings(max_length=config.max_length, precision=resolve_precision("auto", "cpu"))
            result = evaluate(build_bi_encoder(config).eval(), load_tokenizer(model_name), dataset, settings)
            print(f"  {name} zero-shot nDCG@10  {model_name:24s} {result.metrics.means['ndcg@10']:.4f}", flush=True)


def add_derive_parser(sub) -> None:
    de = sub.add_parser("derive", help="build a small base encoder trained at its size (a layer cut, distilled)")
    de.add_argument("teacher", help="the encoder to cut and distil from (minilm)")
    de.add_argument("--layers", type=int, required=True, help="layers the student keeps (3)")
    de.add_argument("--dataset", default="scifact", help="whose corpus and training queries it learns on")
    de.add_argument("--epochs", type=int, default=3)
    de.add_argument("--data-dir", default=None, help="data root (default: $SBMOE_DATA_DIR or ~/.cache/sbmoe/beir)")
    de.add_argument("--evaluate", action="append", default=[], metavar="DATASET",
                    help="then its zero-shot nDCG@10 beside the plain cut's and the teacher's; repeatable")
    de.set_defaults(func=cmd_derive)
