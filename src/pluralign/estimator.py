"""scikit-learn style estimators: ``PALB(n_prototypes=4).fit(train, val)``, then reward, score, adapt, save.

Data can be a path (JSONL, CSV, Parquet, HF dataset directory), a pandas DataFrame, an HF ``Dataset``, or a
``PreferenceData`` (already embedded or not). Texts are embedded once by the estimator's encoder, through
the on-disk cache when ``cache_dir`` is set. Hyperparameters live in ``__init__``; fitted attributes end in
an underscore.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from pluralign.checkpoint import load_checkpoint, save_checkpoint
from pluralign.data.comparisons import PreferenceData
from pluralign.data.readers import read_preferences
from pluralign.encoders import EmbeddingCache, Encoder, embed_data, embed_texts, open_cache
from pluralign.encoders.spec import encoder_from_spec, encoder_spec
from pluralign.errors import CheckpointError, DataError, PluralignError
from pluralign.models.base import Batch, PreferenceModel, Tables
from pluralign.models.btl import BTLModel
from pluralign.models.mlp import MLPConfig
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel
from pluralign.training.adaptation import fit_user_weights, weights_to_logits, zero_shot_weights
from pluralign.training.losses import PREFIX_LOSSES
from pluralign.training.trainer import History, TrainConfig, fit, predict_margins

logger = logging.getLogger(__name__)

DataLike = PreferenceData | pd.DataFrame | str | Path | Any


class PALEstimator:
    """Shared machinery of BTL, PALA and PALB; use those classes."""

    model_kind: ClassVar[str] = ""

    def __init__(
        self,
        n_prototypes: int = 3,
        dim: int = 16,
        *,
        f_layers: int = 2,
        g_layers: int = 2,
        hidden: int | None = None,
        dropout: float = 0.0,
        residual: bool = False,
        bias: bool = True,
        loss: str = "logistic",
        epochs: int = 100,
        batch_size: int = 1024,
        lr_maps: float = 5e-4,
        wd_maps: float = 1e-3,
        lr_prototypes: float = 5e-3,
        lr_users: float = 5e-3,
        wd_users: float = 0.0,
        patience: int | None = 10,
        rows_per_context: int | None = None,
        seed: int = 0,
        encoder: Encoder | str | dict | None = None,
        context_encoder: Encoder | str | dict | None = None,
        cache_dir: str | Path | None = None,
        adapt_ridge: float = 1.0,
        adapt_steps: int = 300,
        progress: bool = False,
        metrics_path: str | Path | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        checkpoint_seconds: float | None = None,
    ) -> None:
        self.n_prototypes = n_prototypes
        self.dim = dim
        self.f_layers = f_layers
        self.g_layers = g_layers
        self.hidden = hidden
        self.dropout = dropout
        self.residual = residual
        self.bias = bias
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr_maps = lr_maps
        self.wd_maps = wd_maps
        self.lr_prototypes = lr_prototypes
        self.lr_users = lr_users
        self.wd_users = wd_users
        self.patience = patience
        self.rows_per_context = rows_per_context
        self.seed = seed
        self.encoder = encoder
        self.context_encoder = context_encoder
        self.cache_dir = cache_dir
        self.adapt_ridge = adapt_ridge
        self.adapt_steps = adapt_steps
        self.progress = progress
        self.metrics_path = metrics_path
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds

    # --- parameters -------------------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p for p in signature.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> PALEstimator:
        for name, value in params.items():
            if name not in self._param_names():
                raise ValueError(f"{type(self).__name__} has no parameter '{name}'")
            setattr(self, name, value)
        if {"encoder", "context_encoder", "cache_dir"} & params.keys():
            self.encoder_ = self.cache_ = self.context_encoder_ = self.context_cache_ = None  # rebuilt on use
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(PALEstimator.__init__).parameters
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults[k].default != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    # --- data -------------------------------------------------------------------------------------------
    def get_encoder(self) -> Encoder:
        if getattr(self, "encoder_", None) is None:
            self.encoder_ = encoder_from_spec(self.encoder)
        return self.encoder_

    def get_cache(self) -> EmbeddingCache | None:
        """The embedding cache, opened once per estimator (opening reads every key)."""
        if self.cache_dir is None:
            return None
        if getattr(self, "cache_", None) is None:
            self.cache_ = open_cache(self.cache_dir, self.get_encoder())
        return self.cache_

    def get_context_encoder(self) -> Encoder:
        """The prompts' encoder: ``context_encoder``, or the items' encoder when that is None."""
        if self.context_encoder is None:
            return self.get_encoder()
        if getattr(self, "context_encoder_", None) is None:
            self.context_encoder_ = encoder_from_spec(self.context_encoder)
        return self.context_encoder_

    def get_context_cache(self) -> EmbeddingCache | None:
        if self.context_encoder is None or self.cache_dir is None:
            return self.get_cache()
        if getattr(self, "context_cache_", None) is None:
            self.context_cache_ = open_cache(self.cache_dir, self.get_context_encoder())
        return self.context_cache_

    def prepare(self, data: DataLike) -> PreferenceData:
        if not isinstance(data, PreferenceData):
            data = read_preferences(data)
        if data.is_embedded:
            return data
        encoder, cache = self.get_encoder(), self.get_cache()
        fitted_without_context = getattr(self, "context_dim_", None) == 0
        if fitted_without_context or (not hasattr(self, "context_dim_") and (data.contexts == "").all()):
            # No prompts at all (or a model trained without them): contexts carry no features.
            items = embed_texts(list(data.items), encoder, cache=cache, show_progress=self.progress)
            return data.with_vectors(items, np.zeros((len(data.contexts), 0), dtype=np.float32))
        return embed_data(
            data,
            encoder,
            cache=cache,
            context_encoder=self.get_context_encoder(),
            context_cache=self.get_context_cache(),
            show_progress=self.progress,
        )

    def _check_dims(self, item_dim: int, context_dim: int, source: str | None = None) -> None:
        if hasattr(self, "item_dim_") and (item_dim, context_dim) != (self.item_dim_, self.context_dim_):
            raise DataError(
                f"vectors have dimensions item={item_dim}, context={context_dim} but the model was "
                f"trained on item={self.item_dim_}, context={self.context_dim_} (a different encoder?)",
                path=source,
            )

    def to_tables(self, data: PreferenceData) -> Tables:
        self._check_dims(data.item_dim, data.context_dim, data.source)
        return Tables(torch.from_numpy(data.item_vectors), torch.from_numpy(data.context_vectors))

    def user_rows(self, data: PreferenceData) -> np.ndarray:
        """Model row of each comparison's user; -1 for users the model does not know."""
        return self.users_.get_indexer(pd.Index(data.user_ids.astype(str)))[data.user]

    def to_batch(self, data: PreferenceData, users: np.ndarray) -> Batch:
        return Batch(
            torch.from_numpy(np.asarray(users, dtype=np.int64)),
            torch.from_numpy(data.context),
            torch.from_numpy(data.chosen),
            torch.from_numpy(data.rejected),
        )

    # --- fitting ----------------------------------------------------------------------------------------
    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        raise NotImplementedError

    def _mlp(self, layers: int) -> MLPConfig:
        return MLPConfig(
            n_layers=layers, hidden=self.hidden, dropout=self.dropout, residual=self.residual, bias=self.bias
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            loss=self.loss,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr_maps=self.lr_maps,
            wd_maps=self.wd_maps,
            lr_prototypes=self.lr_prototypes,
            lr_users=self.lr_users,
            wd_users=self.wd_users,
            patience=self.patience,
            rows_per_context=self.rows_per_context,
            seed=self.seed,
            progress=self.progress,
            metrics_path=None if self.metrics_path is None else str(self.metrics_path),
            checkpoint_dir=None if self.checkpoint_dir is None else str(self.checkpoint_dir),
            checkpoint_every=self.checkpoint_every,
            checkpoint_seconds=self.checkpoint_seconds,
        )

    def fit(self, train: DataLike, val: DataLike | None = None, *, resume: bool = False) -> PALEstimator:
        """Learn the shared maps, prototypes and every training user's weights.

        ``resume=True`` continues from the newest checkpoint in ``checkpoint_dir`` (same data and settings).
        """
        config = dataclasses.replace(self.train_config(), resume=resume)
        train = self.prepare(train)
        if len(train) == 0:
            raise DataError("no training comparisons", path=train.source)
        present = np.unique(train.user)
        self.users_ = pd.Index(train.user_ids[present].astype(str))
        self.n_seen_users_ = len(self.users_)
        self.item_dim_, self.context_dim_ = train.item_dim, train.context_dim
        torch.manual_seed(self.seed)
        self.model_ = self.build_model(self.n_seen_users_, self.item_dim_, self.context_dim_)
        train_part = (self.to_batch(train, self.user_rows(train)), self.to_tables(train))
        val_part = None
        if val is not None:
            val = self.prepare(val)
            users = self.user_rows(val)
            known = users >= 0
            if not known.all():
                logger.warning(
                    "validation: %d of %d comparisons are from users not in the training data; "
                    "they are left out of early stopping",
                    int((~known).sum()),
                    len(val),
                )
            val_part = (self.to_batch(val.subset(known), users[known]), self.to_tables(val))
        if self.loss in PREFIX_LOSSES:  # needs token-level features: the cumulative-loss loop
            from pluralign.training.large import fit_tiny_prefixes

            self.history_: History = fit_tiny_prefixes(
                self.model_, train, train_part, val_part, config, self.get_encoder(), self.cache_dir
            )
        else:
            from pluralign.training.resume import checkpoint_callbacks

            self.history_ = fit(self.model_, train_part, val_part, config, checkpoint_callbacks(config))
        self.zero_shot_weights_ = zero_shot_weights(self.model_, self.n_seen_users_)
        return self

    def check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise PluralignError(f"this {type(self).__name__} is not fitted yet: call fit() or load()")

    # --- prediction -------------------------------------------------------------------------------------
    def _logits_with_zero_shot(self) -> torch.Tensor:
        """The user table plus one last row holding the zero-shot weights, for unknown users."""
        zero_shot = weights_to_logits(self.zero_shot_weights_.double())
        return torch.cat([self.model_.user_logits.detach(), zero_shot[None]])

    def margins(self, data: DataLike) -> np.ndarray:
        """r_u(chosen) - r_u(rejected) for every row; unknown users get the zero-shot weights."""
        self.check_fitted()
        data = self.prepare(data)
        users = self.user_rows(data)
        unknown = users < 0
        if unknown.any():
            logger.info("%d comparisons from unknown users use zero-shot weights", int(unknown.sum()))
            users = np.where(unknown, self.model_.n_users, users)
        batch = self.to_batch(data, users)
        margin = predict_margins(self.model_, batch, self.to_tables(data), self._logits_with_zero_shot())
        return margin.double().numpy()

    def predict_proba(self, data: DataLike) -> np.ndarray:
        """P(chosen preferred over rejected) = sigmoid(margin) per row (for hinge-trained models, a score)."""
        return 1.0 / (1.0 + np.exp(-self.margins(data)))

    def predict(self, data: DataLike) -> np.ndarray:
        """True where the model agrees that ``chosen`` is preferred."""
        return self.margins(data) > 0

    def score(self, data: DataLike) -> float:
        """Accuracy: share of rows where the chosen response gets the higher reward (ties count half)."""
        margin = self.margins(data)
        if len(margin) == 0:
            raise DataError("no comparisons to score")
        return float(np.mean((margin > 0) + 0.5 * (margin == 0)))

    def user_weights(self, user_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """Mixture weights per user (rows) over prototypes (columns w0..w{K-1})."""
        self.check_fitted()
        weights = self.model_.weights().detach().double().numpy()
        frame = pd.DataFrame(weights, index=self.users_, columns=[f"w{k}" for k in range(weights.shape[1])])
        frame.index.name = "user_id"
        if user_ids is None:
            return frame
        missing = [u for u in user_ids if u not in self.users_]
        if missing:
            raise DataError(f"unknown user id(s): {', '.join(map(str, missing[:5]))}", field="user_id")
        return frame.loc[list(user_ids)]

    def reward(
        self, user_ids: str | Sequence[str], prompts: str | Sequence[str], responses: Sequence[str]
    ) -> np.ndarray:
        """Reward of each response for its user and prompt (a single user id or prompt is broadcast)."""
        self.check_fitted()
        responses = list(responses)
        n = len(responses)
        user_ids = [user_ids] * n if isinstance(user_ids, str) else list(user_ids)
        prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
        if not len(user_ids) == len(prompts) == n:
            raise DataError(
                f"user_ids ({len(user_ids)}), prompts ({len(prompts)}) and responses ({n}) differ in length"
            )
        if n == 0:
            return np.zeros(0)
        encoder, cache = self.get_encoder(), self.get_cache()
        items = embed_texts(responses, encoder, cache=cache)
        contexts = (
            embed_texts(prompts, self.get_context_encoder(), cache=self.get_context_cache())
            if self.context_dim_
            else np.zeros((n, 0), dtype=np.float32)
        )
        rows = self.users_.get_indexer(pd.Index([str(u) for u in user_ids]))
        rows = np.where(rows < 0, len(self.users_), rows)  # the zero-shot row
        self._check_dims(items.shape[1], contexts.shape[1])
        with torch.no_grad():
            self.model_.eval()
            # softmax only the requested users' logits, as margins() does, not the whole user table
            weights = self.model_.weights(self._logits_with_zero_shot()[torch.from_numpy(rows)])
            rewards = self.model_.rewards(weights, torch.from_numpy(items), torch.from_numpy(contexts))
        return rewards.double().numpy()

    def copy(self) -> PALEstimator:
        """An independent copy of the fitted model (the encoder and its cache are shared)."""
        clone = copy.copy(self)
        if hasattr(self, "model_"):
            clone.model_ = copy.deepcopy(self.model_)
            clone.users_ = self.users_.copy()
        return clone

    # --- new users --------------------------------------------------------------------------------------
    def fit_weights(self, data: DataLike, *, ridge: float | None = None) -> pd.DataFrame:
        """Few-shot weights of the users in ``data`` with everything shared frozen; the model is unchanged.

        Returns one row per user: the weights (w0..w{K-1}) and how many comparisons they rest on.
        """
        self.check_fitted()
        data = self.prepare(data)
        present = np.unique(data.user)
        ids = pd.Index(data.user_ids[present].astype(str))
        local = np.full(len(data.user_ids), -1, dtype=np.int64)
        local[present] = np.arange(len(present))
        batch = self.to_batch(data, local[data.user])
        weights = fit_user_weights(
            self.model_,
            batch,
            self.to_tables(data),
            n_users=len(ids),
            prior=self.zero_shot_weights_,
            loss=self.loss,
            ridge=self.adapt_ridge if ridge is None else ridge,
            steps=self.adapt_steps,
            seed=self.seed,
        )
        frame = pd.DataFrame(weights.numpy(), index=ids, columns=[f"w{k}" for k in range(weights.shape[1])])
        frame.index.name = "user_id"
        frame["n_comparisons"] = np.bincount(batch.user.numpy(), minlength=len(ids))
        return frame

    def adapt(self, data: DataLike, *, ridge: float | None = None) -> pd.DataFrame:
        """``fit_weights``, then store the weights: new users are added to the model, known users are
        re-fitted from these rows alone. Returns what ``fit_weights`` returns."""
        frame = self.fit_weights(data, ridge=ridge)
        weights = torch.tensor(frame.filter(regex=r"^w\d+$").to_numpy())
        logits = weights_to_logits(weights)
        rows = self.users_.get_indexer(frame.index)
        new = rows < 0
        with torch.no_grad():
            self.model_.user_logits[torch.from_numpy(rows[~new])] = logits[torch.from_numpy(~new)]
        if new.any():
            self.model_.grow_users(int(new.sum()), logits[torch.from_numpy(new)])
            self.users_ = self.users_.append(frame.index[new])
        return frame

    def next_questions(
        self,
        candidates: Any,
        answers: DataLike | None = None,
        *,
        users: Sequence[str] | None = None,
        strategy: str = "info-gain",
        **options: Any,
    ) -> pd.DataFrame:
        """The comparison to ask each user next, to learn their weights fastest (active onboarding).

        ``candidates``: pairs (prompt, a, b) as a DataFrame with columns prompt (optional), a, b, a list of
        tuples, or PreferenceData (a = chosen, b = rejected). ``answers``: the users' comparisons so far
        (any DataLike); ``users`` defaults to the users in ``answers``. A user's answered pairs (same
        prompt, same two responses) are skipped. ``strategy``: "info-gain" (mutual information between the
        answer and w under a particle posterior), "variance" (expected posterior variance reduction),
        "uncertainty" (P(a) nearest 1/2 at the few-shot fit) or "random". ``options``: n_particles, lapse,
        temperature, seed (see ``pluralign.training.active``). PAL-A and PAL-B only.

        Returns one row per user: index (position in ``candidates``), prompt, a, b, p_a (P(a preferred)),
        score, n_answers, n_candidates (candidates left).
        """
        from pluralign.training.active import next_questions

        return next_questions(self, candidates, answers, users=users, strategy=strategy, **options)

    def grow(self, data: DataLike, n_new: int = 1, **options: Any) -> Any:
        """Add ``n_new`` prototypes for the new users of ``data`` that the current ones explain poorly,
        keeping every existing parameter and user prediction exactly; all users of ``data`` are added.
        ``options`` (``reference``, ``users``, ``rule``, ``epochs``, ...): see
        ``pluralign.training.growth.grow_estimator``. Returns a ``GrowReport``."""
        from pluralign.training.growth import grow_estimator

        return grow_estimator(self, data, n_new, **options)

    # --- persistence ------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors and users.json to ``directory`` (atomically)."""
        self.check_fitted()
        params = self.get_params()
        params["encoder"] = encoder_spec(self.encoder_ if getattr(self, "encoder_", None) else self.encoder)
        if self.context_encoder is not None:
            params["context_encoder"] = encoder_spec(self.get_context_encoder())
        params["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
        params["metrics_path"] = None if self.metrics_path is None else str(self.metrics_path)
        params["checkpoint_dir"] = None if self.checkpoint_dir is None else str(self.checkpoint_dir)
        config = {
            "estimator": type(self).__name__,
            "model_kind": self.model_.kind,
            "params": params,
            "item_dim": self.item_dim_,
            "context_dim": self.context_dim_,
            "n_seen_users": self.n_seen_users_,
            "history": {
                "best_epoch": self.history_.best_epoch,
                "best_val_accuracy": self.history_.best_val_accuracy,
                "epochs": len(self.history_.epochs),
                "steps_per_epoch": self.history_.steps_per_epoch,
            },
        }
        if getattr(self.model_, "prototype_blocks", None) is not None:  # grown (training/growth.py)
            config["prototype_blocks"] = list(self.model_.prototype_blocks)
        tensors = dict(self.model_.state_dict())
        tensors["zero_shot_weights"] = self.zero_shot_weights_.double()
        return save_checkpoint(directory, config, tensors, list(self.users_), self._extend_checkpoint(config))

    def _extend_checkpoint(self, config: dict[str, Any]) -> Callable[[Path], dict[str, Any]] | None:
        """Hook for subclasses (PAL-Large): edit ``config`` and return a writer of extra files."""
        return None

    def _restore(self, directory: Path, config: dict[str, Any]) -> None:
        """Hook for subclasses (PAL-Large): load what ``_extend_checkpoint`` wrote."""

    @classmethod
    def load(cls, directory: str | Path) -> PALEstimator:
        """Load a checkpoint written by ``save``; ``PALEstimator.load`` picks the right class."""
        config, tensors, users = load_checkpoint(directory)
        name = config.get("estimator", "")
        target = ESTIMATORS.get(name) or _large_estimators().get(name)
        if target is None:
            raise CheckpointError(f"{directory}: unknown estimator '{config.get('estimator')}'")
        if cls is not PALEstimator and target is not cls:
            raise CheckpointError(f"{directory}: holds a {target.__name__}, not a {cls.__name__}")
        try:
            params = {k: v for k, v in config["params"].items() if k in target._param_names()}
            est = target(**params)
            est.users_ = pd.Index(users)
            est.item_dim_, est.context_dim_ = int(config["item_dim"]), int(config["context_dim"])
            est.n_seen_users_ = int(config["n_seen_users"])
            est.zero_shot_weights_ = tensors.pop("zero_shot_weights")
            est.model_ = est.build_model(len(users), est.item_dim_, est.context_dim_)
            if config.get("prototype_blocks") is not None:
                from pluralign.models.grown import make_blockwise

                make_blockwise(est.model_, config["prototype_blocks"])
            est.model_.load_state_dict(tensors, strict=True)
            est._restore(Path(directory), config)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{directory}: checkpoint does not match its config ({exc})") from None
        est.model_.eval()
        est.history_ = History(**{k: v for k, v in config.get("history", {}).items() if k != "epochs"})
        return est


class PALA(PALEstimator):
    """PAL-A: ideal points r_u(x, c) = -||f(x; c) - f(w_u P)||^2 (paper eq. 4)."""

    model_kind = "pal_a"

    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        return PALAModel(
            n_users, self.n_prototypes, item_dim, context_dim, self.dim, self._mlp(self.f_layers)
        )


class PALB(PALEstimator):
    """PAL-B: preference mappings r_u(x, c) = s <f(x), sum_k w_uk g_k(c)> (paper eq. 6)."""

    model_kind = "pal_b"

    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        return PALBModel(
            n_users,
            self.n_prototypes,
            item_dim,
            context_dim,
            self.dim,
            self._mlp(self.f_layers),
            self._mlp(self.g_layers),
        )


class BTL(PALEstimator):
    """Bradley-Terry baseline: one reward MLP([x; c]) shared by every user (PAL with K = 1)."""

    model_kind = "btl"

    def __init__(self, **params: Any) -> None:
        params.setdefault("n_prototypes", 1)
        if params["n_prototypes"] != 1:
            raise ValueError("BTL has exactly one prototype")
        super().__init__(**params)

    @classmethod
    def _param_names(cls) -> list[str]:
        return PALEstimator._param_names()

    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        return BTLModel(n_users, item_dim, context_dim, self._mlp(self.f_layers))


ESTIMATORS: dict[str, type[PALEstimator]] = {"PALA": PALA, "PALB": PALB, "BTL": BTL}


def _large_estimators() -> dict[str, type[PALEstimator]]:
    """PAL-Large classes, imported on demand (they live in estimator_large.py, which imports this module)."""
    from pluralign.estimator_large import LARGE_ESTIMATORS

    return LARGE_ESTIMATORS
