"""Content-addressed cache of token states below the trained layers: the depth ladder's shared input.

A run that trains the top k of L layers (``optim.trained_layers: k``) only ever sees, of a text, its token
states after the embeddings and the lower L - k layers, which never change. They are computed once per
(base model weights, layer, max length, precision, exact list of texts), like the pooled-embedding cache
(:mod:`sbmoe_ray.evaluation.embedding_cache`), and shared by every trial, arm, seed and study under the
storage path: training pairs, held-out validation and the test corpora. An entry is a folder
``states/<key[:2]>/<key>/`` with ``states.npy`` (every token of every text, ``[tokens, hidden]``, float32, or
bfloat16 bits when the run computes in bf16) and ``offsets.npy`` (text i is rows ``offsets[i]:offsets[i+1]``),
read memory-mapped; it is written under a temporary name and renamed, so concurrent readers never see half of
one. Each build appends a line to ``states/builds.jsonl`` (what was encoded, how long it took).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sbmoe_ray.evaluation.dense import EncodeSettings, embed_in_order, pad_batch, tokenize_sorted
from sbmoe_ray.evaluation.embedding_cache import content_key, model_identity
from sbmoe_ray.model.backbones import load_tokenizer
from sbmoe_ray.model.bi_encoder import BiEncoder, ModelConfig, build_bi_encoder
from sbmoe_ray.model.depth import HiddenStates, layers_of, lower_forward
from sbmoe_ray.runtime.precision import autocast

BUILD_LOG = "builds.jsonl"


@dataclass
class TokenStates:
    """The cached states of a list of texts (memory-mapped), and batches of them as model inputs."""

    states: np.ndarray          # [tokens, hidden]: float32, or uint16 holding bfloat16 bits
    offsets: np.ndarray         # [texts + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, rows: Sequence[int]) -> HiddenStates:
        """Texts ``rows`` padded to the longest of them: states and attention mask."""
        lengths = [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]
        width = max(lengths) if lengths else 1
        hidden = np.zeros((len(rows), width, self.states.shape[1]), dtype=self.states.dtype)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, (r, n) in enumerate(zip(rows, lengths)):
            hidden[j, :n] = self.states[self.offsets[r]: self.offsets[r] + n]
            mask[j, :n] = 1
        tensor = torch.from_numpy(hidden)
        return HiddenStates(tensor.view(torch.bfloat16) if hidden.dtype == np.uint16 else tensor, mask)


class LayerStateCache:
    """Token states after the lower ``L - trained_layers`` layers of a base encoder, computed on first use."""

    def __init__(self, root: Path, config: ModelConfig, settings: EncodeSettings, trained_layers: int) -> None:
        self.root, self.config, self.settings = Path(root) / "states", config, settings
        self.trained_layers = trained_layers
        self._model_id = model_identity(config.base_model)
        self._encoder: BiEncoder | None = None
        self._tokenizer = None

    def key(self, texts: Sequence[str], max_length: int) -> str:
        return content_key(("token-states", self._model_id, self.trained_layers, max_length, self.settings.precision),
                           texts)

    def path(self, texts: Sequence[str], max_length: int) -> Path:
        key = self.key(texts, max_length)
        return self.root / key[:2] / key

    def encoder(self) -> tuple[BiEncoder, object]:
        """The frozen base encoder and its tokenizer, loaded on first use."""
        if self._encoder is None:
            self._encoder = build_bi_encoder(ModelConfig(**{**vars(self.config), "num_experts": 0}),
                                             frozen_encoder=True).to(self.settings.device)
            layers_of(self._encoder.backbone)        # a clear error for an encoder without a layer list
            self._tokenizer = load_tokenizer(self.config.base_model)
        return self._encoder, self._tokenizer

    def get(self, texts: Sequence[str], max_length: int, desc: str = "states", pooled=None) -> TokenStates:
        """The texts' states, built now where missing; ``pooled`` (a
        :class:`~sbmoe_ray.evaluation.embedding_cache.PooledEmbeddingCache` of the same base model and settings)
        gets its missing entry for the same texts from the same forward pass (stage 1's cache and stage 2's
        are then filled by one encoding)."""
        folder = self.path(texts, max_length)
        if not (folder / "offsets.npy").is_file():
            fused = pooled is not None and self._fusable(pooled) and not pooled.path(texts, max_length).is_file()
            self._build(folder, texts, max_length, desc, pooled if fused else None)
        return TokenStates(np.load(folder / "states.npy", mmap_mode="r"), np.load(folder / "offsets.npy"))

    def _fusable(self, pooled) -> bool:
        mine, theirs = self.config, pooled.config
        return (mine.base_model, mine.pooling, self.settings.precision, str(self.root.parent)) == (
            theirs.base_model, theirs.pooling, pooled.settings.precision, str(pooled.root))

    def _build(self, folder: Path, texts: Sequence[str], max_length: int, desc: str, pooled=None) -> None:
        encoder, tokenizer = self.encoder()
        total = len(layers_of(encoder.backbone))
        pooled_rows = np.empty((len(texts), encoder.hidden_size), dtype=np.float32) if pooled is not None else None
        start = time.perf_counter()
        ids, order = tokenize_sorted(tokenizer, texts, max_length)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in ids])
        bf16 = self.settings.precision == "bf16"
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            states = np.lib.format.open_memmap(staging / "states.npy", mode="w+",
                                               dtype=np.uint16 if bf16 else np.float32,
                                               shape=(int(offsets[-1]), encoder.hidden_size))
            encoder.eval()
            with torch.inference_mode(), tqdm(total=len(texts), desc=f"{desc} (layer states)", unit="text",
                                              disable=not self.settings.progress) as bar:
                for begin in range(0, len(texts), self.settings.batch_size):
                    index = order[begin: begin + self.settings.batch_size]
                    batch = {k: v.to(self.settings.device)
                             for k, v in pad_batch([ids[i] for i in index], tokenizer.pad_token_id).items()}
                    with autocast(self.settings.device, self.settings.precision):
                        hidden = self._forward(encoder, batch, total, pooled_rows, index)
                    hidden = (hidden.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16) if bf16
                              else hidden.float().cpu().numpy())
                    for row, i in enumerate(index):
                        states[offsets[i]: offsets[i + 1]] = hidden[row, : offsets[i + 1] - offsets[i]]
                    bar.update(len(index))
            states.flush()
            del states
            np.save(staging / "offsets.npy", offsets)
            if pooled_rows is not None:
                pooled.put(pooled.path(texts, max_length), pooled_rows)
            try:
                staging.rename(folder)
            except OSError:               # another process built it first: theirs is the same
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        record = {"key": folder.name, "desc": desc, "texts": len(texts), "tokens": int(offsets[-1]),
                  "trained_layers": self.trained_layers, "precision": self.settings.precision,
                  "seconds": time.perf_counter() - start, "pid": os.getpid(), "time": time.time()}
        with open(self.root / BUILD_LOG, "a") as f:
            f.write(json.dumps(record) + "\n")


    def _forward(self, encoder: BiEncoder, batch: dict, total: int, pooled_rows: np.ndarray | None,
                 index: np.ndarray) -> torch.Tensor:
        """The states below the trained layers; with ``pooled_rows``, every layer, and the pooled output too."""
        if pooled_rows is None:
            return lower_forward(encoder.backbone, batch["input_ids"], batch["attention_mask"], self.trained_layers)
        every = encoder.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 output_hidden_states=True).hidden_states
        pooled_rows[index] = encoder.pool_hidden(every[total], batch["attention_mask"]).float().cpu().numpy()
        return every[total - self.trained_layers]


def builds(root: Path) -> list[dict]:
    """Every build of a state cache under ``root`` (the cache dir), oldest first."""
    path = Path(root) / "states" / BUILD_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def dataset_states(cache: LayerStateCache, dataset, query_max_length: int, pooled=None
                   ) -> tuple[TokenStates, TokenStates]:
    """Cached states of a dataset's corpus and queries (in their order), built now where missing (with
    ``pooled``'s entries, when missing too, from the same pass: :meth:`LayerStateCache.get`)."""
    docs = cache.get([d.full_text for d in dataset.corpus.values()], cache.config.max_length, f"{dataset.name} corpus",
                     pooled)
    queries = cache.get(list(dataset.queries.values()), query_max_length, f"{dataset.name} queries", pooled)
    return docs, queries


def state_lookup(ids: list[str], states: TokenStates, device: torch.device) -> Callable[[list[str]], HiddenStates]:
    """Ids -> a padded batch of their cached states on ``device``."""
    row = {i: n for n, i in enumerate(ids)}
    return lambda batch_ids: states.batch([row[i] for i in batch_ids]).to(device)


@torch.inference_mode()
def embed_states(model: BiEncoder, states: TokenStates, settings: EncodeSettings, desc: str = "embed",
                 expert_load=None, top1: np.ndarray | None = None) -> np.ndarray:
    """Embed every text of ``states`` with the top layers and head of ``model`` (float32, in text order),
    longest first so that a batch pads little."""
    model.eval()
    order = np.argsort(-states.lengths(), kind="stable")
    out = embed_in_order(order, lambda index: states.batch(index).to(settings.device), model.embed_inputs, settings,
                         desc, expert_load, top1)
    return out if out is not None else np.empty((0, model.hidden_size), dtype=np.float32)
