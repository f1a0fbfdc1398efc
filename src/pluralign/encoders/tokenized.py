"""Local Hugging Face / sentence-transformers model directories and tables of tokenized texts.

    inspect_model_dir  where a model directory's transformer weights are and how its vectors are pooled
    TokenTable         the token ids of a table of unique texts, tokenized once, stored ragged

Shared by the token-prefix features (``encoders.tokens``) and PAL-Large's trainable tower
(``models.encoder``), so the encoders layer does not depend on the models layer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluralign.errors import PluralignError

#: the sentence-transformers module types a tower can stand in for
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
#: a tower's default token limit when neither the model nor the tokenizer names a sane one
DEFAULT_MAX_LENGTH = 256


@dataclass(frozen=True)
class TowerSource:
    """Where a tower's weights are and how its vectors are pooled (read from a model directory)."""

    model_dir: Path
    transformer_dir: Path
    normalize: bool
    max_length: int | None


def inspect_model_dir(path: str | Path | None) -> TowerSource:
    """Read a sentence-transformers or plain HF model directory (``None``: the default MiniLM).

    A sentence-transformers directory must pool by mean (the tower's pooling); its Normalize module and
    ``max_seq_length`` carry over. A plain HF directory is mean-pooled without normalization.
    """
    from pluralign.encoders.sentence import default_model_path

    root = default_model_path() if path is None else Path(path).expanduser()
    root = root.resolve()
    if not root.is_dir():
        raise PluralignError(f"encoder model directory {root} does not exist or is not a directory")
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        if not (root / "config.json").is_file():
            raise PluralignError(f"{root} is not a Hugging Face model directory (no config.json)")
        return TowerSource(root, root, normalize=False, max_length=None)
    try:
        modules = json.loads(modules_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PluralignError(f"{modules_file}: not valid JSON ({exc})") from None
    types = {m.get("type"): m for m in modules if isinstance(m, dict)}
    if _ST_TRANSFORMER not in types:
        raise PluralignError(f"{modules_file}: no {_ST_TRANSFORMER} module to fine-tune")
    transformer_dir = (root / types[_ST_TRANSFORMER].get("path", "")).resolve()
    if _ST_POOLING in types:
        pooling_file = root / types[_ST_POOLING].get("path", "") / "config.json"
        pooling = json.loads(pooling_file.read_text()) if pooling_file.is_file() else {}
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
        if modes and modes != ["pooling_mode_mean_tokens"]:
            raise PluralignError(
                f"{pooling_file}: pools by {', '.join(modes)}; the trainable tower pools by mean only"
            )
    max_length = None
    settings = transformer_dir / "sentence_bert_config.json"
    if settings.is_file():
        max_length = json.loads(settings.read_text()).get("max_seq_length")
    return TowerSource(root, transformer_dir, normalize=_ST_NORMALIZE in types, max_length=max_length)


# ========================================================================================================
class TokenTable:
    """Token ids of a table of texts, tokenized once: ``ids`` (flat int64), ``offsets`` [n + 1],
    ``lengths`` [n]. Row ``i`` is ``ids[offsets[i]:offsets[i + 1]]`` (special tokens included)."""

    def __init__(self, ids: torch.Tensor, offsets: torch.Tensor) -> None:
        self.ids = ids
        self.offsets = offsets
        self.lengths = offsets[1:] - offsets[:-1]

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_texts(cls, tokenizer: Any, texts: Sequence[str], max_length: int) -> TokenTable:
        """Tokenize ``texts`` (truncated to ``max_length`` tokens) with a HF tokenizer."""
        texts = [str(t) for t in texts]
        if not texts:
            return cls(torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
        encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)[
            "input_ids"
        ]
        lengths = np.fromiter((len(row) for row in encoded), dtype=np.int64, count=len(encoded))
        if (lengths == 0).any():
            row = int(np.flatnonzero(lengths == 0)[0])
            raise PluralignError(f"the tokenizer gives no tokens for text {texts[row]!r}")
        ids = np.fromiter((i for row in encoded for i in row), dtype=np.int64, count=int(lengths.sum()))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return cls(torch.from_numpy(ids), torch.from_numpy(offsets))

    def padded(self, rows: torch.Tensor, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids and attention mask [len(rows), longest of them], right-padded, in one gather."""
        lengths = self.lengths[rows]
        width = int(lengths.max()) if len(rows) else 0
        position = torch.arange(width)
        mask = position[None, :] < lengths[:, None]
        flat = (self.offsets[rows][:, None] + position[None, :]).clamp(max=max(len(self.ids) - 1, 0))
        ids = torch.where(mask, self.ids[flat], torch.full_like(flat, pad_id))
        return ids, mask.long()


# ========================================================================================================
