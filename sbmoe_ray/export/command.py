"""``sbmoe export SOURCE --out DIR``: a checkpoint, a trial's run folder, or a study's chosen model (or its
baseline) as a sentence-transformers folder with its model card."""

from __future__ import annotations

import argparse
from pathlib import Path


def export(source: Path, out: Path, base_model: str | None = None, baseline: bool = False) -> Path:
    """Resolve ``source`` (:func:`sbmoe_ray.export.source.resolve`) and write its folder to ``out``."""
    from sbmoe_ray.export.card import model_card
    from sbmoe_ray.export.sentence_transformer import export_folder
    from sbmoe_ray.export.source import resolve
    from sbmoe_ray.model.backbones import load_tokenizer

    found = resolve(Path(source), base_model, baseline)
    return export_folder(found.model, found.config, load_tokenizer(found.config.base_model), Path(out),
                         model_card(found.facts, found.config, Path(out).name))


def check_out(out: Path, overwrite: bool) -> None:
    """``--out`` is a folder that is absent or empty, unless ``--overwrite`` (an export never replaces files
    silently)."""
    from sbmoe_ray.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out={str(out)!r}: a file, not a folder; name a new folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        entries = len(list(out.iterdir()))
        raise ConfigError(f"--out={str(out)!r}: the folder is not empty ({entries} entries); name a new or empty "
                          "folder, or pass --overwrite to replace its files")


def cmd_export(args: argparse.Namespace) -> None:
    from sbmoe_ray.train.checks import check_writable

    check_out(Path(args.out), args.overwrite)
    check_writable(Path(args.out), "--out")
    folder = export(Path(args.source), Path(args.out), args.base_model, args.baseline)
    print(f"wrote {folder}: load it with SentenceTransformer({str(folder)!r}, trust_remote_code=True)")


def add_export_parser(sub) -> None:
    ex = sub.add_parser("export", help="a trained model as a sentence-transformers folder (with its model card)")
    ex.add_argument("source", help="a checkpoint folder, a trial's run folder, or a study folder")
    ex.add_argument("--out", required=True, help="the folder to write (absent or empty)")
    ex.add_argument("--overwrite", action="store_true", help="write into a --out folder that has files")
    ex.add_argument("--base-model", default=None, help="study: whose answer (default: the only base model)")
    ex.add_argument("--baseline", action="store_true", help="study: the base model's baseline, not its chosen model")
    ex.set_defaults(func=cmd_export)
