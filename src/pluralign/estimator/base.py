"""What every estimator shares: the data boundary, fit, prediction, new users and persistence.

Data can be a path (JSONL, CSV, Parquet, HF dataset directory), a pandas DataFrame, an HF ``Dataset``, or a
``PreferenceData`` (already embedded or not). Texts are embedded once by the estimator's encoder, through
the on-disk cache when ``cache_dir`` is set. Hyperparameters are the ``__init__`` arguments (from
``params.py``); fitted attributes end in an underscore.

The public data boundary other modules use (active onboarding, growth, selection, the service):
``prepare`` (read + embed), ``user_rows`` (index users), ``to_batch`` / ``to_tables`` (model inputs),
``get_encoder`` / ``get_cache`` (the encoder and its cache), ``check_fitted`` and ``train_config``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator

from pluralign.checkpoint import load_checkpoint, model_directory, save_checkpoint
from pluralign.data.comparisons import PreferenceData
from pluralign.data.readers import read_preferences
from pluralign.encoders import EmbeddingCache, Encoder, embed_data, embed_texts, open_cache
from pluralign.encoders.spec import encoder_from_spec, encoder_spec
from pluralign.errors import CheckpointError, DataError, PluralignError
from pluralign.estimator.checks import check_fit, check_training_data, check_validation, hold_out
from pluralign.estimator.params import TINY_PARAMS, Param, make_init
from pluralign.models.base import Batch, PreferenceModel, Tables, seeded_rng
from pluralign.models.mlp import MLPConfig
from pluralign.training.adaptation import ADAPT_INITS, fit_user_weights, zero_shot_weights
from pluralign.training.losses import PREFIX_LOSSES
from pluralign.training.resume import checkpoint_callbacks
from pluralign.training.trainer import History, TrainConfig, fit, predict_margins

logger = logging.getLogger(__name__)

DataLike = PreferenceData | pd.DataFrame | str | Path | Any


#: every estimator class by name (filled as the classes are defined; ``load`` looks checkpoints up here)
ESTIMATORS: dict[str, type[PALEstimator]] = {}


class PALEstimator(BaseEstimator):
    """Shared machinery of BTL, PALA, PALB and the peers (LoRe, MatrixFactorization, PerUser); use those.

    A scikit-learn estimator: ``clone``, ``get_params`` / ``set_params``, ``GridSearchCV`` and ``Pipeline``
    work (``fit(X)`` takes preference rows, ``score(X)`` is pairwise accuracy). The hyperparameters and
    their help live in ``pluralign.estimator.params``; ``__init__`` is generated from that table, so
    ``inspect.signature(PALB)`` lists them all.
    """

    model_kind: ClassVar[str] = ""
    #: the hyperparameter table of this class (``__init__`` and the CLI derive from it)
    hyperparameters: ClassVar[tuple[Param, ...]] = TINY_PARAMS
    #: attributes set by ``fit`` / ``load`` (reset at the start of every fit)
    fitted_attributes: ClassVar[tuple[str, ...]] = (
        "model_",
        "users_",
        "n_seen_users_",
        "item_dim_",
        "context_dim_",
        "history_",
        "zero_shot_weights_",
        "grow_report_",
        "fit_warnings_",
    )
    __init__ = make_init(TINY_PARAMS)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:  # each class's own signature, from its (inherited) table
            cls.__init__ = make_init(cls.hyperparameters)
        if cls.model_kind:
            ESTIMATORS[cls.__name__] = cls

    def check_init(self) -> None:
        """Checks of the hyperparameters right after ``__init__`` (a subclass hook; none by default)."""

    def set_params(self, **params: Any) -> PALEstimator:
        names = {p.name for p in self.hyperparameters}
        for name in params:
            if name.split("__")[0] not in names:
                raise ValueError(f"{type(self).__name__} has no parameter '{name}'")
        super().set_params(**params)
        if {"encoder", "context_encoder", "cache_dir"} & params.keys():
            self.encoder_ = self.cache_ = self.context_encoder_ = self.context_cache_ = None  # rebuilt on use
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

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
        """``data`` read (if a path, frame or dataset) and embedded, through the cache. A fitted model
        embeds prompts only if it was trained with them; before fitting, only if ``data`` has any."""
        return self._embed(data, getattr(self, "context_dim_", None))

    def _embed(self, data: DataLike, context_dim: int | None) -> PreferenceData:
        """``prepare`` for a model whose context width is ``context_dim`` (None: decided by the data)."""
        if not isinstance(data, PreferenceData):
            data = read_preferences(data)
        if data.is_embedded:
            return data
        encoder, cache = self.get_encoder(), self.get_cache()
        if context_dim == 0 or (context_dim is None and (data.contexts == "").all()):
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
        """The embedded data's item and context vectors as the model's lookup tables (dims checked)."""
        self._check_dims(data.item_dim, data.context_dim, data.source)
        return Tables(torch.from_numpy(data.item_vectors), torch.from_numpy(data.context_vectors))

    def user_rows(self, data: PreferenceData) -> np.ndarray:
        """Model row of each comparison's user; -1 for users the model does not know."""
        return rows_of(self.users_, data)

    def to_batch(self, data: PreferenceData, users: np.ndarray) -> Batch:
        """Index tensors of ``data``'s rows, with ``users`` (one model row per comparison) as user index."""
        return Batch(
            torch.from_numpy(np.asarray(users, dtype=np.int64)),
            torch.from_numpy(data.context),
            torch.from_numpy(data.chosen),
            torch.from_numpy(data.rejected),
        )

    # --- fitting ----------------------------------------------------------------------------------------
    def build_model(self, n_users: int, item_dim: int, context_dim: int) -> PreferenceModel:
        raise NotImplementedError

    def _generator(self) -> torch.Generator:
        """The generator a new model is initialised from: seeded by ``seed``; the process RNG is untouched."""
        return torch.Generator().manual_seed(self.seed)

    def _mlp(self, layers: int) -> MLPConfig:
        return MLPConfig(
            n_layers=layers, hidden=self.hidden, dropout=self.dropout, residual=self.residual, bias=self.bias
        )

    def train_config(self) -> TrainConfig:
        """The optimisation settings: every ``TrainConfig`` field that is a hyperparameter of this class
        (matched by name; ``pluralign.estimator.params``)."""
        names = {f.name for f in dataclasses.fields(TrainConfig)} & set(self.get_params())
        values = {name: getattr(self, name) for name in names}
        for name in ("metrics_path", "checkpoint_dir"):
            values[name] = None if values[name] is None else str(values[name])
        return TrainConfig(**values)

    def reset(self) -> PALEstimator:
        """Forget everything ``fit`` learned (the hyperparameters stay)."""
        for name in self.fitted_attributes:
            self.__dict__.pop(name, None)
        return self

    def fit(self, train: DataLike, val: DataLike | None = None, *, resume: bool = False) -> PALEstimator:
        """Learn the shared maps, prototypes and every training user's weights.

        The step budget (batch size, steps, learning rates, schedule) comes from the data where the
        hyperparameters leave it None (``pluralign.training.budget``). Without ``val``, ``val_fraction`` of
        each user's rows is held out for early stopping (seeded; 0: train on all; not with ``epochs``,
        which trains those epochs on all rows as earlier versions did). Data that cannot support
        the model gets a warning (``fit_warnings_``). Any earlier fit is forgotten first; the fitted
        attributes are set only when training succeeds. ``resume=True`` continues from the newest
        checkpoint in ``checkpoint_dir`` (same data and settings).
        """
        self.reset()
        config = dataclasses.replace(self.train_config(), resume=resume)
        train = self.prepare(train)
        if len(train) == 0:
            raise DataError("no training comparisons", path=train.source)
        # a class without prototypes (PerUser) is checked as one reward per user
        k = self.get_params().get("n_prototypes", 1)
        warnings = check_training_data(train, k, type(self).__name__)
        users = pd.Index(train.user_ids[np.unique(train.user)].astype(str))
        validation, note = None, None
        if val is not None:
            val, validation = self._embed(val, train.context_dim), "given"
        elif self.val_fraction and config.patience is not None and config.epochs is None:
            train, val, note = hold_out(train, self.val_fraction, self.seed)
            validation = "held out" if val is not None else None
            logger.info(note)
        model = self.build_model(len(users), train.item_dim, train.context_dim)
        train_part = (self.to_batch(train, rows_of(users, train)), self.to_tables(train))
        model.set_training_rows(train_part[0].user)
        val_part = None
        if val is not None:
            if (val.item_dim, val.context_dim) != (train.item_dim, train.context_dim):
                raise DataError(
                    f"validation vectors have dimensions item={val.item_dim}, context={val.context_dim} "
                    f"but the training data has item={train.item_dim}, context={train.context_dim}",
                    path=val.source,
                )
            rows = rows_of(users, val)
            known = rows >= 0
            warnings += check_validation(
                train_part[0].user.numpy(), rows, len(users), given=validation == "given"
            )
            val_part = (self.to_batch(val.subset(known), rows[known]), self.to_tables(val))
        with seeded_rng(self.seed):
            if self.loss in PREFIX_LOSSES:  # needs token-level features: the cumulative-loss loop
                from pluralign.training.large import fit_tiny_prefixes

                history = fit_tiny_prefixes(
                    model, train, train_part, val_part, config, self.get_encoder(), self.cache_dir
                )
            else:
                history = fit(model, train_part, val_part, config, checkpoint_callbacks(config))
        history.validation = validation if val_part is not None and len(val_part[0]) else None
        history.notes += [note] if note else []
        warnings += check_fit(history)
        self.model_, self.users_, self.n_seen_users_ = model, users, len(users)
        self.item_dim_, self.context_dim_ = train.item_dim, train.context_dim
        self.history_: History = history
        self.fit_warnings_: list[str] = warnings
        self.zero_shot_weights_ = self.zero_shot(model, len(users))
        return self

    def zero_shot(self, model: PreferenceModel, n_seen: int) -> torch.Tensor:
        """The weights of a user the model has not seen: the mean of the seen users' (a subclass hook)."""
        return zero_shot_weights(model, n_seen)

    def check_fitted(self) -> None:
        """Raise a clear error unless ``fit`` or ``load`` has run."""
        if not hasattr(self, "model_"):
            raise PluralignError(f"this {type(self).__name__} is not fitted yet: call fit() or load()")

    # --- prediction -------------------------------------------------------------------------------------
    def _logits_with_zero_shot(self) -> torch.Tensor:
        """The user table plus one last row holding the zero-shot weights, for unknown users."""
        zero_shot = self.model_.logits_of(self.zero_shot_weights_.double())
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

    def score(self, data: DataLike, y: None = None) -> float:
        """Accuracy: share of rows where the chosen response gets the higher reward (ties count half).

        ``y`` is only there for scikit-learn's scorers (``GridSearchCV``, ``Pipeline.score``) and must be
        None: the labels are the rows themselves (which response was chosen)."""
        if y is not None:
            raise ValueError("score() takes no labels: the preference rows carry them (chosen vs rejected)")
        margin = self.margins(data)
        if len(margin) == 0:
            raise DataError("no comparisons to score")
        return float(np.mean((margin > 0) + 0.5 * (margin == 0)))

    def user_weights(self, user_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """Mixture weights per user (rows) over prototypes (columns w0..w{K-1}); for models whose users
        are free vectors (MatrixFactorization, PerUser), those vectors (not on the simplex)."""
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
        self,
        user_ids: str | Sequence[str] | None,
        prompts: str | Sequence[str],
        responses: Sequence[str],
        *,
        weights: Any = None,
    ) -> np.ndarray:
        """Reward of each response for its user and prompt (a single user id or prompt is broadcast).

        ``weights`` ([K], broadcast, or [n, K]) replaces the users' weights, ``user_ids`` being None: e.g.
        prototype k's reward with the one-hot weights e_k, or any fixed mixture.
        """
        self.check_fitted()
        responses = list(responses)
        n = len(responses)
        if weights is not None:
            if user_ids is not None:
                raise DataError("pass user_ids or weights, not both")
            fixed = torch.as_tensor(np.asarray(weights, dtype=np.float64)).float()
            k = int(self.model_.n_prototypes)
            if fixed.dim() == 1:
                fixed = fixed[None].expand(n, -1)
            if fixed.shape != (n, k) or not bool(torch.isfinite(fixed).all()):
                raise DataError(f"weights must be {k} finite numbers (or one row of {k} per response)")
            user_ids = [""] * n
        elif user_ids is None:
            raise DataError("pass user_ids (or weights)")
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
            if weights is None:
                rows_weights = self.model_.weights(self._logits_with_zero_shot()[torch.from_numpy(rows)])
            else:
                rows_weights = fixed.to(self.model_.user_logits.dtype)
            rewards = self.model_.rewards(rows_weights, torch.from_numpy(items), torch.from_numpy(contexts))
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
        ``adapt_method`` "map" starts at ``zero_shot_weights_`` with ``adapt_ridge`` (our default); "paper"
        starts at a random point (seeded by ``seed``) with no ridge, as PAL App. D.1. ``ridge`` overrides.
        """
        self.check_fitted()
        data = self.prepare(data)
        present = np.unique(data.user)
        ids = pd.Index(data.user_ids[present].astype(str))
        local = np.full(len(data.user_ids), -1, dtype=np.int64)
        local[present] = np.arange(len(present))
        batch = self.to_batch(data, local[data.user])
        weights = self.few_shot_weights(batch, self.to_tables(data), len(ids), ridge)
        frame = pd.DataFrame(weights.numpy(), index=ids, columns=[f"w{k}" for k in range(weights.shape[1])])
        frame.index.name = "user_id"
        frame["n_comparisons"] = np.bincount(batch.user.numpy(), minlength=len(ids))
        return frame

    def few_shot_weights(
        self, batch: Batch, tables: Tables, n_users: int, ridge: float | None
    ) -> torch.Tensor:
        """Weights [n_users, K] of users 0..n_users-1 of ``batch`` with the model frozen (``fit_weights``'
        solver; a subclass hook)."""
        init = ADAPT_INITS.get(self.adapt_method)
        if init is None:
            raise ValueError(
                f"unknown adapt_method '{self.adapt_method}', expected one of {list(ADAPT_INITS)}"
            )
        return fit_user_weights(
            self.model_,
            batch,
            tables,
            n_users=n_users,
            prior=self.zero_shot_weights_,
            loss=self.loss,
            ridge=(0.0 if init == "random" else self.adapt_ridge) if ridge is None else ridge,
            steps=self.adapt_steps,
            seed=self.seed,
            init=init,
        )

    def adapt(self, data: DataLike, *, ridge: float | None = None) -> pd.DataFrame:
        """``fit_weights``, then store the weights: new users are added to the model, known users are
        re-fitted from these rows alone. Returns what ``fit_weights`` returns."""
        frame = self.fit_weights(data, ridge=ridge)
        weights = torch.tensor(frame.filter(regex=r"^w\d+$").to_numpy())
        logits = self.model_.logits_of(weights)
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
        temperature, seed (see ``pluralign.estimator.onboarding``, ``pluralign.training.active``).
        PAL-A and PAL-B only.

        Returns one row per user: index (position in ``candidates``), prompt, a, b, p_a (P(a preferred)),
        score, n_answers, n_candidates (candidates left).
        """
        from pluralign.estimator.onboarding import next_questions

        return next_questions(self, candidates, answers, users=users, strategy=strategy, **options)

    def grow(self, data: DataLike, n_new: int = 1, **options: Any) -> PALEstimator:
        """A new estimator with ``n_new`` more prototypes, for the new users of ``data`` that the current
        ones explain poorly, keeping every existing parameter and user prediction exactly; all users of
        ``data`` are added. This estimator is not modified. The new one's ``grow_report_`` (a
        ``GrowReport``) says what was flagged and measured. ``options`` (``reference``, ``users``, ``rule``,
        ``epochs``, ...): see ``pluralign.estimator.growth.grow_estimator``."""
        from pluralign.estimator.growth import grow_estimator

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
                "best_step": self.history_.best_step,
                "best_val_accuracy": self.history_.best_val_accuracy,
                "best_val_loss": self.history_.best_val_loss,
                "steps": self.history_.steps,
                "steps_per_epoch": self.history_.steps_per_epoch,
                "seconds": self.history_.seconds,
                "comparisons_per_second": self.history_.comparisons_per_second,
                "settings": self.history_.settings,
                "validation": self.history_.validation,
                "warnings": list(getattr(self, "fit_warnings_", [])),
            },
        }
        if getattr(self.model_, "prototype_blocks", None) is not None:  # grown (training/growth.py)
            config["prototype_blocks"] = list(self.model_.prototype_blocks)
        tensors = dict(self.model_.state_dict())
        tensors["zero_shot_weights"] = self.zero_shot_weights_.double()
        return save_checkpoint(directory, config, tensors, list(self.users_), self.checkpoint_extras(config))

    def checkpoint_extras(self, config: dict[str, Any]) -> Callable[[Path], dict[str, Any]] | None:
        """Hook for subclasses (PAL-Large): edit ``config`` and return a writer of extra files."""
        return None

    def restore_extras(self, directory: Path, config: dict[str, Any]) -> None:
        """Hook for subclasses (PAL-Large): load what ``checkpoint_extras`` wrote."""

    @classmethod
    def load(cls, directory: str | Path) -> PALEstimator:
        """Load a checkpoint written by ``save`` (or the ``model/`` of a run directory holding one);
        ``PALEstimator.load`` picks the right class."""
        directory = model_directory(directory)
        config, tensors, users = load_checkpoint(directory)
        target = ESTIMATORS.get(config.get("estimator", ""))
        if target is None:
            raise CheckpointError(f"{directory}: unknown estimator '{config.get('estimator')}'")
        if cls is not PALEstimator and target is not cls:
            raise CheckpointError(f"{directory}: holds a {target.__name__}, not a {cls.__name__}")
        try:
            names = {p.name for p in target.hyperparameters}
            params = {k: v for k, v in config["params"].items() if k in names}
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
            est.restore_extras(Path(directory), config)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{directory}: checkpoint does not match its config ({exc})") from None
        est.model_.eval()
        fields = {f.name for f in dataclasses.fields(History)} - {"records"}
        est.history_ = History(**{k: v for k, v in config.get("history", {}).items() if k in fields})
        est.fit_warnings_ = list(config.get("history", {}).get("warnings", []))
        return est


def rows_of(users: pd.Index, data: PreferenceData) -> np.ndarray:
    """Position in ``users`` of each comparison's user; -1 where absent."""
    return users.get_indexer(pd.Index(data.user_ids.astype(str)))[data.user]
