"""A trained SB-MoE retriever as a sentence-transformers model folder: usable without sbmoe-ray.

``Transformer → Pooling → SBMoEHead → Normalize`` (the head only with experts, Normalize only where the base
model declares it), the encoder's own weights (fine-tuned, or the base model's for a frozen encoder), the
head's weights, and ``sbmoe_module.py`` (:mod:`sbmoe_ray.export.sbmoe_module`, torch and
sentence-transformers only). ``SentenceTransformer(folder, trust_remote_code=True)`` loads it, and its
embeddings equal the toolkit's (a test holds cosine >= 0.9999 and nDCG@10 to 1e-4). The head runs its
inference top-k (``inference: all`` = every expert), without the gate noise of training.

To publish it: ``SentenceTransformer(folder, trust_remote_code=True).push_to_hub("user/name")`` (the card
and ``sbmoe_module.py`` go with it; needs a Hugging Face token and network).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from sbmoe_ray.model.bi_encoder import BiEncoder
from sbmoe_ray.model.config import ModelConfig

MODULE_FILE = Path(__file__).with_name("sbmoe_module.py")


def _head_class():
    """``SBMoEHead`` imported from the file the export ships (so its saved type is ``sbmoe_module.SBMoEHead``)."""
    spec = importlib.util.spec_from_file_location("sbmoe_module", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SBMoEHead


def head_module(model: BiEncoder, config: ModelConfig):
    """The toolkit's SB-MoE head as the export's module, with the same weights (the gate noise left out)."""
    head = model.head.eval()
    if config.routing != "learned" or config.mixture != "residual":
        what = (f"model.routing={config.routing!r}" if config.routing != "learned"
                else f"model.mixture={config.mixture!r}")
        raise ValueError(f"{what}: an attribution control is for attribution, not for use; export the chosen "
                         "configuration or the baseline")
    module = _head_class()(model.hidden_size, head.num_experts, head.active_k(),
                           head.experts[0][0].out_features, config.activation)
    module.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("noise.")})
    return module


def to_sentence_transformer(model: BiEncoder, config: ModelConfig, tokenizer):
    """The bi-encoder as a ``SentenceTransformer`` (in memory, on the CPU)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    with tempfile.TemporaryDirectory() as tmp:        # the encoder as it is (a layer cut keeps its depth)
        model.backbone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        modules = [Transformer(tmp, max_seq_length=config.max_length),
                   Pooling(model.hidden_size, pooling_mode="cls" if config.pooling == "cls" else "mean")]
    if model.head is not None:
        modules.append(head_module(model, config))
    if config.normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu")


def export_folder(model: BiEncoder, config: ModelConfig, tokenizer, out: Path, card: str) -> Path:
    """Write the model folder: modules, weights, tokenizer, ``sbmoe_module.py`` and the model card."""
    model = model.cpu().eval()
    st = to_sentence_transformer(model, config, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    st.save(str(out), create_model_card=False)
    if model.head is not None:
        shutil.copyfile(MODULE_FILE, out / MODULE_FILE.name)
    (out / "README.md").write_text(card)
    return out
