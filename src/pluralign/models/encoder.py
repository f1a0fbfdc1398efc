"""The trainable text tower of PAL-Large: a local Hugging Face encoder, mean-pooled, fine-tuned end to end.

    TokenTable   the token ids of a table of unique texts, tokenized once, stored ragged (ids + offsets)
    TextTower    AutoModel + tokenizer: mean-pooled vectors of table rows, or the vector of every prefix
    TowerEncoder the tower as an ``Encoder`` (eval mode, no cache), so prediction paths embed through it

A prefix vector is the (optionally L2-normalized) mean of the token states up to and including one
position; the last prefix is the whole text, i.e. exactly the pooled vector. Token states come from one
forward pass of the whole text: with a bidirectional encoder (BERT, MiniLM) each state has seen the
whole text, as in sentence-transformers' pooling; with a causal LM it would be the exact prefix state.

Weights are read from ``model.safetensors`` only (``use_safetensors=True``): pickled ``.bin`` weights
are refused. Nothing is downloaded: every load is ``local_files_only``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pluralign.encoders.tokenized import DEFAULT_MAX_LENGTH, TokenTable, TowerSource, inspect_model_dir
from pluralign.errors import PluralignError

__all__ = [
    "TextTower",
    "TokenTable",
    "TowerEncoder",
    "TowerSource",
    "inspect_model_dir",
    "masked_mean",
    "prefix_means",
]


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` [n, L, D] over positions where ``mask`` [n, L] is 1."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def prefix_means(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the states up to each position, [n, L, D] (right padding: valid wherever ``mask`` is 1)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    totals = torch.cumsum(states * weights, dim=1)
    return totals / torch.cumsum(weights, dim=1).clamp(min=1.0)


class TextTower(nn.Module):
    """A Hugging Face encoder whose mean-pooled token states feed PAL's f and g heads."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, normalize: bool, max_length: int) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.max_length = int(max_length)
        vocab = int(model.get_input_embeddings().num_embeddings)
        if len(tokenizer) > vocab:
            raise PluralignError(
                f"the tokenizer has {len(tokenizer)} tokens but the encoder embeds only {vocab}: "
                "tokenizer and encoder do not belong together"
            )
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        max_length: int | None = None,
        normalize: bool | None = None,
        tokenizer_path: str | Path | None = None,
    ) -> TextTower:
        """Load from a local sentence-transformers/HF directory (``None``: the default MiniLM).

        ``tokenizer_path`` reads the tokenizer from another directory (default: the model's own).
        """
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        source = inspect_model_dir(path)
        weights = source.transformer_dir / "model.safetensors"
        if not weights.is_file():
            raise PluralignError(
                f"{source.transformer_dir} has no model.safetensors (pickled .bin weights are refused)"
            )
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(
                str(source.transformer_dir), local_files_only=True, use_safetensors=True
            )
            tokenizer = AutoTokenizer.from_pretrained(
                str(tokenizer_path or source.transformer_dir), local_files_only=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise PluralignError(f"cannot load encoder from {source.transformer_dir}: {exc}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        limit = max_length or source.max_length or getattr(model.config, "max_position_embeddings", None)
        limit = min(
            int(limit or DEFAULT_MAX_LENGTH), int(getattr(model.config, "max_position_embeddings", 1 << 30))
        )
        return cls(
            model,
            tokenizer,
            normalize=source.normalize if normalize is None else normalize,
            max_length=limit,
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> TokenTable:
        return TokenTable.from_texts(self.tokenizer, texts, self.max_length)

    def token_states(self, table: TokenTable, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states [len(rows), L, D] of the table rows and their attention mask [len(rows), L]."""
        device = next(self.model.parameters()).device
        ids, mask = table.padded(rows.cpu(), self.pad_id)
        ids, mask = ids.to(device), mask.to(device)
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask

    def _finish(self, pooled: torch.Tensor) -> torch.Tensor:
        pooled = pooled.float()
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def pooled(self, table: TokenTable, rows: torch.Tensor) -> torch.Tensor:
        """Mean-pooled (and normalized, if the source normalizes) vectors [len(rows), D]."""
        states, mask = self.token_states(table, rows)
        return self._finish(masked_mean(states, mask))

    def prefixes(self, table: TokenTable, rows: torch.Tensor) -> torch.Tensor:
        """Vector of every prefix [len(rows), L, D]; row i is valid up to ``table.lengths[rows[i]]``."""
        states, mask = self.token_states(table, rows)
        return self._finish(prefix_means(states, mask))

    @torch.no_grad()
    def encode_table(self, table: TokenTable, batch_size: int = 64) -> torch.Tensor:
        """Pooled vectors of every row, in eval mode, longest first (less padding), float32 on CPU."""
        was_training = self.training
        self.eval()
        try:
            order = torch.argsort(table.lengths, descending=True, stable=True)
            out = torch.empty(len(table), self.dim)
            for s in range(0, len(order), batch_size):
                rows = order[s : s + batch_size]
                out[rows] = self.pooled(table, rows).cpu()
        finally:
            self.train(was_training)
        return out

    def save(self, directory: str | Path) -> None:
        """Weights as model.safetensors plus the model config and tokenizer files (no pickles)."""
        from transformers.utils import logging as hf_logging

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar for one small shard is noise
        try:
            self.model.save_pretrained(str(directory), safe_serialization=True)
            self.tokenizer.save_pretrained(str(directory))
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    def digest(self) -> str:
        """sha256 (16 hex digits) of the current weights: names an encoder's vectors in its id."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode() + b"\0")
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


class TowerEncoder:
    """A (fine-tuned) tower as an ``Encoder``: texts in, pooled float32 vectors out, in eval mode.

    Its vectors change whenever the tower trains, so they never go to the embedding cache.
    """

    cacheable = False

    def __init__(self, tower: TextTower) -> None:
        self.tower = tower
        self._id: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TowerEncoder(dim={self.dim}, normalize={self.tower.normalize})"

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = f"tower:{self.tower.digest()}"
        return self._id

    @property
    def dim(self) -> int:
        return self.tower.dim

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self.tower.encode_table(self.tower.tokenize(texts), batch_size)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
