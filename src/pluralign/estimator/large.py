"""PAL-A-Large and PAL-B-Large: the text encoder is fine-tuned together with the PAL heads (paper Sec. 3.1).

    PALBLarge(n_prototypes=2, encoder_lr=1e-5).fit("train.jsonl")     # MiniLM, trained end to end
    PALBLarge(encoder="path/to/hf-model", loss="cumulative", grad_accum_steps=4, precision="bf16")

They are the Tiny estimators (same heads, same prediction, few-shot and serving code) with a trainable
text tower in front (``models/encoder.py``), trained by the one fit loop (``training/trainer.py``) with
the tower's feed (``training/large.py``); checkpoints and ``resume`` work as for Tiny. Separate
classes rather than a flag on PALA/PALB because Large has its own hyperparameters (encoder learning rate,
token limit, gradient accumulation, precision, device) and its own checkpoint content, while the Tiny
estimators keep exactly their parameters, defaults and code paths; the paper names them the same way.

Defaults follow App. D.3 (Table 4): encoder lr 1e-5 (paper 9.65e-6) without weight decay, heads lr 1e-4
with weight decay 0.01, user weights lr 5e-3, one epoch, small batches. Gradients are clipped to norm 1.

A checkpoint holds the heads as usual plus ``encoder/``: the tower's weights as model.safetensors with its
config and tokenizer files (no pickles), whose sha256 config.json records and ``load`` verifies.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from pluralign.checkpoint import sha256_file
from pluralign.data.comparisons import PreferenceData
from pluralign.data.readers import read_preferences
from pluralign.encoders import EmbeddingCache, SentenceTransformerEncoder
from pluralign.encoders.spec import VECTOR_SUFFIXES, encoder_spec
from pluralign.errors import CheckpointError, DataError, PluralignError
from pluralign.estimator.base import DataLike, PALEstimator, rows_of
from pluralign.estimator.checks import check_fit, check_training_data
from pluralign.estimator.params import LARGE_PARAMS
from pluralign.estimator.tiny import PALA, PALB
from pluralign.models.base import seeded_rng
from pluralign.models.encoder import TextTower, TowerEncoder
from pluralign.training.adaptation import zero_shot_weights
from pluralign.training.large import TowerSource, fit_large

ENCODER_DIR = "encoder"


class _LargeMixin:
    """What PALALarge and PALBLarge add to PALA and PALB: their hyperparameter table (``params.py``:
    the Tiny ones with App. D.3's defaults, plus the encoder's) and the trainable tower."""

    hyperparameters = LARGE_PARAMS
    fitted_attributes = (*PALEstimator.fitted_attributes, "encoder_", "cache_")

    # --- data -------------------------------------------------------------------------------------------
    def _tower_path(self) -> str | Path | None:
        """The model directory to start from (None: the default MiniLM)."""
        spec = self.encoder
        if isinstance(spec, SentenceTransformerEncoder):
            return spec.model_path
        if isinstance(spec, dict) and spec.get("kind") == "sentence-transformers":
            return spec.get("model")
        if spec is None:
            return None
        text = str(spec) if isinstance(spec, str | Path) else ""
        if not text or text.startswith("precomputed:") or text.endswith(VECTOR_SUFFIXES):
            raise PluralignError(
                f"{type(self).__name__} fine-tunes a text encoder, so `encoder` must be a local "
                f"sentence-transformers/HF model directory, not {spec!r}; precomputed vectors train "
                "with PALA/PALB (Tiny)"
            )
        return text

    @staticmethod
    def _texts(data: DataLike) -> PreferenceData:
        """The data's texts; vectors it carries are dropped (Large embeds with its own tower)."""
        if not isinstance(data, PreferenceData):
            data = read_preferences(data)
        return replace(data, item_vectors=None, context_vectors=None) if data.is_embedded else data

    def get_cache(self) -> EmbeddingCache | None:
        return None  # the tower's vectors change with training: never cached

    def prepare(self, data: DataLike) -> PreferenceData:
        return super().prepare(self._texts(data))

    # --- fitting ----------------------------------------------------------------------------------------
    def fit(self, train: DataLike, val: DataLike | None = None, *, resume: bool = False) -> PALEstimator:
        """Fine-tune the encoder with the shared maps, prototypes and every training user's weights.

        ``resume=True`` continues from the newest checkpoint in ``checkpoint_dir`` (same data and settings).
        """
        if self.context_encoder is not None:
            raise PluralignError(
                f"{type(self).__name__} embeds prompts with its own trainable encoder: "
                "leave context_encoder None"
            )
        self.reset()
        # every TrainConfig field is a hyperparameter of this class (encoder_lr, grad_accum_steps, ...)
        config = replace(self.train_config(), resume=resume)
        train = self._texts(train)
        if len(train) == 0:
            raise DataError("no training comparisons", path=train.source)
        warnings = check_training_data(train, self.n_prototypes, type(self).__name__)
        tower = TextTower.from_pretrained(self._tower_path(), max_length=self.max_length)
        with_context = not (train.contexts == "").all()
        items = tower.tokenize(train.items)
        contexts = tower.tokenize(train.contexts) if with_context else None
        users = pd.Index(train.user_ids[train.users_present()].astype(str))
        item_dim, context_dim = tower.dim, tower.dim if with_context else 0
        model = self.build_model(len(users), item_dim, context_dim)
        source = TowerSource(tower, items, contexts)
        val_part = None
        if val is not None:
            val = self._texts(val)
            rows = rows_of(users, val)
            known = rows >= 0
            val_items = tower.tokenize(val.items)
            val_contexts = tower.tokenize(val.contexts) if with_context else None
            n_val_contexts = len(val.contexts)
            val_part = (
                self.to_batch(val.subset(known), rows[known]),
                lambda: source.encode(val_items, val_contexts, n_val_contexts),
            )
        batch = self.to_batch(train, rows_of(users, train))
        with seeded_rng(self.seed):
            history = fit_large(model, source, batch, val_part, config)
        history.validation = "given" if val_part is not None and len(val_part[0]) else None
        model.cpu()
        tower.cpu()
        # fitted state only now that training succeeded
        self.model_, self.users_, self.n_seen_users_ = model, users, len(users)
        self.item_dim_, self.context_dim_ = item_dim, context_dim
        self.history_ = history
        self.fit_warnings_ = warnings + check_fit(history)
        self.encoder_ = TowerEncoder(tower)
        self.cache_ = None
        self.zero_shot_weights_ = zero_shot_weights(model, len(users))
        return self

    # --- persistence ------------------------------------------------------------------------------------
    def checkpoint_extras(self, config: dict[str, Any]):
        config["params"]["encoder"] = encoder_spec(self.encoder)  # the starting point, as given
        tower: TextTower = self.encoder_.tower

        def write(directory: Path) -> dict[str, Any]:
            tower.save(directory / ENCODER_DIR)
            return {
                "tower": {
                    "dir": ENCODER_DIR,
                    "normalize": tower.normalize,
                    "max_length": tower.max_length,
                    "weights_sha256": sha256_file(directory / ENCODER_DIR / "model.safetensors"),
                }
            }

        return write

    def restore_extras(self, directory: Path, config: dict[str, Any]) -> None:
        info = config.get("tower")
        if not isinstance(info, dict):
            raise CheckpointError(
                f"{directory / 'config.json'}: a {type(self).__name__} needs a 'tower' entry"
            )
        weights = directory / info["dir"] / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(
                f"{directory}: missing {weights.relative_to(directory)} (the fine-tuned encoder)"
            )
        if sha256_file(weights) != info["weights_sha256"]:
            raise CheckpointError(f"{weights}: checksum mismatch: the file is corrupt or was changed")
        tower = TextTower.from_pretrained(
            directory / info["dir"], max_length=info["max_length"], normalize=info["normalize"]
        )
        tower.eval()
        self.encoder_ = TowerEncoder(tower)
        self.cache_ = None


class PALALarge(_LargeMixin, PALA):
    """PAL-A-Large: PAL-A's ideal points over a text encoder trained end to end."""


class PALBLarge(_LargeMixin, PALB):
    """PAL-B-Large: PAL-B's preference mappings over a text encoder trained end to end."""
