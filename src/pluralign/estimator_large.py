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

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from pluralign.checkpoint import sha256_file
from pluralign.data.comparisons import PreferenceData
from pluralign.data.readers import read_preferences
from pluralign.encoders import EmbeddingCache, SentenceTransformerEncoder
from pluralign.encoders.spec import VECTOR_SUFFIXES, encoder_spec
from pluralign.errors import CheckpointError, DataError, PluralignError
from pluralign.estimator import PALA, PALB, DataLike, PALEstimator
from pluralign.models.encoder import TextTower, TowerEncoder
from pluralign.training.adaptation import zero_shot_weights
from pluralign.training.config import TrainConfig
from pluralign.training.large import TowerSource, fit_large

ENCODER_DIR = "encoder"
#: Large's own defaults for parameters the Tiny estimators share (PAL App. D.3, Table 4)
LARGE_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 16,
    "lr_maps": 1e-4,
    "wd_maps": 1e-2,
    "lr_prototypes": 1e-4,
    "lr_users": 5e-3,
    "patience": None,
}


class _LargeMixin:
    """What PALALarge and PALBLarge add to PALA and PALB."""

    large_params: ClassVar[tuple[str, ...]] = (
        "encoder_lr",
        "encoder_wd",
        "max_length",
        "grad_accum_steps",
        "max_grad_norm",
        "precision",
        "device",
        "max_steps",
    )

    def __init__(
        self,
        n_prototypes: int = 3,
        dim: int = 16,
        *,
        encoder_lr: float = 1e-5,
        encoder_wd: float = 0.0,
        max_length: int | None = 128,
        grad_accum_steps: int = 1,
        max_grad_norm: float | None = 1.0,
        precision: str = "auto",
        device: str = "cpu",
        max_steps: int | None = None,
        **params: Any,
    ) -> None:
        """``encoder``: a local sentence-transformers/HF model directory (default: MiniLM); texts are
        truncated to ``max_length`` tokens (None: the model's limit). Other parameters: see PALEstimator."""
        for name, value in LARGE_DEFAULTS.items():
            params.setdefault(name, value)
        super().__init__(n_prototypes, dim, **params)
        self.encoder_lr = encoder_lr
        self.encoder_wd = encoder_wd
        self.max_length = max_length
        self.grad_accum_steps = grad_accum_steps
        self.max_grad_norm = max_grad_norm
        self.precision = precision
        self.device = device
        self.max_steps = max_steps

    @classmethod
    def _param_names(cls) -> list[str]:
        return [*PALEstimator._param_names(), *cls.large_params]

    def __repr__(self) -> str:
        base = inspect.signature(PALEstimator.__init__).parameters
        own = inspect.signature(_LargeMixin.__init__).parameters
        defaults = (
            {k: p.default for k, p in base.items()}
            | LARGE_DEFAULTS
            | {k: own[k].default for k in self.large_params}
        )
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

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

    def _large_config(self) -> TrainConfig:
        return replace(
            self.train_config(),
            encoder_lr=self.encoder_lr,
            encoder_wd=self.encoder_wd,
            grad_accum_steps=self.grad_accum_steps,
            max_grad_norm=self.max_grad_norm,
            precision=self.precision,
            device=self.device,
            max_steps=self.max_steps,
        )

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
        config = replace(self._large_config(), resume=resume)
        train = self._texts(train)
        if len(train) == 0:
            raise DataError("no training comparisons", path=train.source)
        import torch

        torch.manual_seed(self.seed)
        tower = TextTower.from_pretrained(self._tower_path(), max_length=self.max_length)
        with_context = not (train.contexts == "").all()
        items = tower.tokenize(train.items)
        contexts = tower.tokenize(train.contexts) if with_context else None
        present = train.users_present()
        self.users_ = pd.Index(train.user_ids[present].astype(str))
        self.n_seen_users_ = len(self.users_)
        self.item_dim_, self.context_dim_ = tower.dim, tower.dim if with_context else 0
        self.model_ = self.build_model(self.n_seen_users_, self.item_dim_, self.context_dim_)
        source = TowerSource(tower, items, contexts)
        val_part = None
        if val is not None:
            val = self._texts(val)
            users = self.user_rows(val)
            known = users >= 0
            val_items = tower.tokenize(val.items)
            val_contexts = tower.tokenize(val.contexts) if with_context else None
            n_val_contexts = len(val.contexts)
            val_part = (
                self.to_batch(val.subset(known), users[known]),
                lambda: source.encode(val_items, val_contexts, n_val_contexts),
            )
        batch = self.to_batch(train, self.user_rows(train))
        self.history_ = fit_large(self.model_, source, batch, val_part, config)
        self.model_.cpu()
        tower.cpu()
        self.encoder_ = TowerEncoder(tower)
        self.cache_ = None
        self.zero_shot_weights_ = zero_shot_weights(self.model_, self.n_seen_users_)
        return self

    # --- persistence ------------------------------------------------------------------------------------
    def _extend_checkpoint(self, config: dict[str, Any]):
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

    def _restore(self, directory: Path, config: dict[str, Any]) -> None:
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


LARGE_ESTIMATORS: dict[str, type[PALEstimator]] = {"PALALarge": PALALarge, "PALBLarge": PALBLarge}
