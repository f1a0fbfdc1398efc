"""Synthetic heterogeneous preferences with a known ground truth (PAL paper Sec. 4.2 and App. D.2).

PAL-A (the paper's simulation, after Canal et al. 2022): items x ~ N(0, I/d); f* a random linear map
R^d -> R^d (Gaussian entries of variance 1/d, so it roughly preserves norms); K* prototypes
p_k ~ N(0, I/d) resampled until every pair is at least ``min_prototype_distance`` apart; user i's ideal
point a_i = sum_k w_ik p_k. The user prefers the item whose image is closer to f*(a_i):
r_i(x) = -||f*(x) - f*(a_i)||^2 (squared as in the paper's eq. 4 and our PAL-A model; the sign labels do
not depend on squaring). Items have no context: one empty context with a [1, 0] vector.

PAL-B: f* and g*_k random linear maps R^d -> R^d followed by L2 normalization onto the unit sphere;
items and contexts ~ N(0, I/d); r_i(x, c) = <f*(x), sum_k w_ik g*_k(c)>.

User weights: "mixture" draws W ~ N(0, I) as the paper states and maps it to the simplex with a softmax,
as our models parametrize weights (``mixture_weights="dirichlet"`` draws Dirichlet(1), uniform on the
simplex, instead); "partition" puts each user on one prototype chosen uniformly at random; "groups" puts
each user on one prototype too, in groups as equal as possible (n_users // K or one more), in random order.

Labels: ``noise=None`` gives the paper's deterministic labels, sign of the reward difference; a float T
gives Bradley-Terry-Luce labels, P(x_l preferred) = sigmoid((r(x_l) - r(x_r)) / T). Each comparison
draws two fresh items (the paper) unless ``n_items`` sets a shared pool; PAL-B contexts likewise
(``n_contexts``). Labels are computed from the float32 vectors that are stored, so they agree exactly
with the data a model sees.

Randomness: one ``np.random.SeedSequence(seed)`` spawns independent streams for the ground truth, the seen
users, and the unseen users, so adding unseen users or changing ``n_test`` does not alter the training
rows. All sampling is vectorized (no Python loop over users or comparisons).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit, softmax

from pluralign.atomic import atomic_write_json
from pluralign.data.comparisons import PreferenceData

__all__ = ["SyntheticDataset", "make_synthetic", "write_synthetic"]

MODELS = ("pal_a", "pal_b")
SETTINGS = ("mixture", "partition", "groups")
MIXTURE_WEIGHTS = ("softmax", "dirichlet")

# Rows per block when evaluating PAL-B rewards.
_BLOCK_ROWS = 1 << 16
_SPLITS = ("train", "val", "test", "unseen", "unseen_test")
# Prototype rejection sampling: candidate sets drawn per batch, and batches before giving up.
_PROTOTYPE_BATCH = 1024
_PROTOTYPE_BATCHES = 100


@dataclass(frozen=True, eq=False)
class SyntheticDataset:
    """Splits of one synthetic population plus its ground truth.

    ``train``, ``val`` (possibly empty) and ``test`` share the user table (``user-<i>``), the item table
    (``item-<i>``) and the context table (``ctx-<i>``; PAL-A: one empty context with a [1, 0] vector).
    ``unseen`` (few-shot rows) and ``unseen_test`` (``n_test`` rows each) are users ``unseen-<i>`` with
    their own user table, drawn from the same prototypes and map; None without unseen users.

    ``true_weights`` [n_users, K*] and ``unseen_weights`` are the users' simplex weights; ``true_map`` [d, d]
    is f* (x -> true_map @ x, then normalized for PAL-B); ``true_prototypes`` is [K*, d] ideal points
    (PAL-A) or [K*, d, d] matrices of the maps g*_k (PAL-B). ``bayes_accuracy`` is the accuracy of the true
    model on ``test`` (1.0 when ``noise`` is None).
    """

    train: PreferenceData
    val: PreferenceData
    test: PreferenceData
    true_weights: np.ndarray
    true_prototypes: np.ndarray
    true_map: np.ndarray
    bayes_accuracy: float
    model: str
    setting: str
    noise: float | None
    unseen: PreferenceData | None = None
    unseen_test: PreferenceData | None = None
    unseen_weights: np.ndarray | None = None

    @property
    def n_prototypes(self) -> int:
        return int(self.true_weights.shape[1])

    def true_margins(self, data: PreferenceData, weights: np.ndarray | None = None) -> np.ndarray:
        """r(chosen) - r(rejected) under the true model for each row of ``data`` (any split).

        ``weights`` ([len(data.user_ids), K*]) defaults to the true weights of the split's user table.
        """
        if weights is None:
            if data.user_ids is self.train.user_ids:
                weights = self.true_weights
            elif self.unseen is not None and data.user_ids is self.unseen.user_ids:
                weights = self.unseen_weights
            else:
                raise ValueError(
                    "pass the users' weights: the data's user table is not one of this dataset's"
                )
        truth = _Truth(self.model, self.true_map, self.true_prototypes)
        return _margins(truth, data, np.asarray(weights, dtype=np.float64))


@dataclass(frozen=True)
class _Truth:
    model: str
    f: np.ndarray  # [d, d]
    prototypes: np.ndarray  # PAL-A [K, d] points, PAL-B [K, d, d] maps


# --------------------------------------------------------------------------------------------------------
def make_synthetic(
    *,
    model: str = "pal_a",
    setting: str = "mixture",
    dim: int = 16,
    n_prototypes: int = 3,
    n_users: int = 100,
    n_train: int = 100,
    n_test: int = 50,
    n_val: int = 0,
    min_prototype_distance: float = 1.0,
    noise: float | None = None,
    n_items: int | None = None,
    n_contexts: int | None = None,
    n_unseen_users: int = 0,
    n_unseen_per_user: int = 50,
    mixture_weights: str = "softmax",
    seed: int = 0,
) -> SyntheticDataset:
    """A synthetic dataset from the PAL-A or PAL-B generative model (module docstring has the details).

    ``n_train`` / ``n_val`` / ``n_test`` are comparisons per seen user; ``n_unseen_users`` users get
    ``n_unseen_per_user`` comparisons in ``unseen`` and ``n_test`` in ``unseen_test``. ``dim`` is d, the
    dimension of items, contexts and the maps' images. ``min_prototype_distance`` (PAL-A only) is delta.
    ``n_items`` / ``n_contexts`` (PAL-B only) set shared pools instead of fresh vectors per comparison.
    """
    _validate(
        model, setting, dim, n_prototypes, n_users, n_train, n_test, n_val, min_prototype_distance, noise,
        n_items, n_contexts, n_unseen_users, n_unseen_per_user, mixture_weights,
    )  # fmt: skip
    # Independent streams: ground truth, seen and unseen users' weights, then one per split (rows, labels).
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3 + len(_SPLITS))]
    truth_rng, seen_rng, unseen_rng = streams[:3]
    split_rng = dict(zip(_SPLITS, streams[3:], strict=True))

    # Ground truth and shared pools. Vectors are rounded to float32 (as stored) before any label is made.
    d, k = dim, n_prototypes
    if model == "pal_a":
        prototypes = _draw_prototypes(truth_rng, k, d, min_prototype_distance)
    else:
        prototypes = truth_rng.normal(0.0, 1.0 / np.sqrt(d), size=(k, d, d))
    truth = _Truth(model, truth_rng.normal(0.0, 1.0 / np.sqrt(d), size=(d, d)), prototypes)
    item_pool = None if n_items is None else _gaussian(truth_rng, n_items, d)
    context_pool = None if n_contexts is None else _gaussian(truth_rng, n_contexts, d)

    weights = {"seen": _draw_weights(seen_rng, n_users, k, setting, mixture_weights)}
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    if n_unseen_users:
        weights["unseen"] = _draw_weights(unseen_rng, n_unseen_users, k, setting, mixture_weights)
        sizes |= {"unseen": n_unseen_per_user, "unseen_test": n_test}
    n_split_users = {"seen": n_users, "unseen": n_unseen_users}
    drawn = {
        name: _draw_rows(split_rng[name], n_split_users[_who(name)], n, d, model, item_pool, context_pool)
        for name, n in sizes.items()
    }

    # One item table and one context table for all splits: the pools, else the fresh vectors in split order.
    fresh_items = item_pool is None
    items = np.concatenate([r.item_vectors for r in drawn.values()]) if fresh_items else item_pool
    if model == "pal_a":
        contexts = np.zeros((1, 0), dtype=np.float32)
    elif context_pool is None:
        contexts = np.concatenate([r.context_vectors for r in drawn.values()])
    else:
        contexts = context_pool
    item_start = dict(
        zip(drawn, np.cumsum([0] + [len(r.item_vectors) for r in drawn.values()]), strict=False)
    )
    ctx_start = dict(
        zip(drawn, np.cumsum([0] + [len(r.context_vectors) for r in drawn.values()]), strict=False)
    )
    item_names = _names("item-", len(items))
    context_names = np.array([""], dtype=object) if model == "pal_a" else _names("ctx-", len(contexts))
    user_ids = {"seen": _names("user-", n_users), "unseen": _names("unseen-", n_unseen_users)}

    out: dict[str, PreferenceData] = {}
    accuracy: dict[str, float] = {}
    for name, rows in drawn.items():
        who = _who(name)
        left, right = rows.left + item_start[name], rows.right + item_start[name]
        context = rows.context + ctx_start[name]
        margin = _margin_rows(truth, items, contexts, rows.user, context, left, right, weights[who])
        prefer_left = _labels(margin, noise, split_rng[name])
        # Ties (measure zero) count half, as a coin flip would.
        agree = np.where(margin == 0, 0.5, (margin > 0) == prefer_left)
        accuracy[name] = float(agree.mean()) if len(agree) else 1.0
        out[name] = PreferenceData(
            user=rows.user,
            context=context,
            chosen=np.where(prefer_left, left, right),
            rejected=np.where(prefer_left, right, left),
            user_ids=user_ids[who],
            contexts=context_names,
            items=item_names,
            item_vectors=items,
            context_vectors=contexts,
            source=f"synthetic:{model}/{setting}",
            meta={"split": name, "seed": seed},
        )

    return SyntheticDataset(
        train=out["train"],
        val=out["val"],
        test=out["test"],
        true_weights=weights["seen"],
        true_prototypes=truth.prototypes,
        true_map=truth.f,
        bayes_accuracy=accuracy["test"],
        model=model,
        setting=setting,
        noise=noise,
        unseen=out.get("unseen"),
        unseen_test=out.get("unseen_test"),
        unseen_weights=weights.get("unseen"),
    )


def _who(split: str) -> str:
    return "unseen" if split.startswith("unseen") else "seen"


# --------------------------------------------------------------------------------------------------------
def _validate(
    model: str,
    setting: str,
    dim: int,
    n_prototypes: int,
    n_users: int,
    n_train: int,
    n_test: int,
    n_val: int,
    min_prototype_distance: float,
    noise: float | None,
    n_items: int | None,
    n_contexts: int | None,
    n_unseen_users: int,
    n_unseen_per_user: int,
    mixture_weights: str,
) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model '{model}', expected one of {', '.join(MODELS)}")
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting '{setting}', expected one of {', '.join(SETTINGS)}")
    if mixture_weights not in MIXTURE_WEIGHTS:
        raise ValueError(f"unknown mixture_weights '{mixture_weights}', expected softmax or dirichlet")
    minimums = {
        "dim": (dim, 1),
        "n_prototypes": (n_prototypes, 1),
        "n_users": (n_users, 1),
        "n_train": (n_train, 1),
        "n_test": (n_test, 0),
        "n_val": (n_val, 0),
        "n_unseen_users": (n_unseen_users, 0),
        "n_unseen_per_user": (n_unseen_per_user, 1),
    }
    for name, (value, low) in minimums.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not np.isfinite(min_prototype_distance) or min_prototype_distance < 0:
        raise ValueError(f"min_prototype_distance must be finite and >= 0, got {min_prototype_distance!r}")
    if noise is not None and not (np.isfinite(noise) and noise > 0):
        raise ValueError(f"noise must be None (sign labels) or a temperature > 0, got {noise!r}")
    if n_items is not None and (not isinstance(n_items, int | np.integer) or n_items < 2):
        raise ValueError(f"n_items must be None (fresh items) or an int >= 2, got {n_items!r}")
    if n_contexts is not None:
        if model == "pal_a":
            raise ValueError("n_contexts applies to PAL-B only: PAL-A synthetic items have no context")
        if not isinstance(n_contexts, int | np.integer) or n_contexts < 1:
            raise ValueError(f"n_contexts must be None (fresh contexts) or an int >= 1, got {n_contexts!r}")


def _gaussian(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n vectors ~ N(0, I/d), as stored (float32)."""
    return rng.normal(0.0, 1.0 / np.sqrt(d), size=(n, d)).astype(np.float32)


def _names(prefix: str, n: int) -> np.ndarray:
    return np.char.add(prefix, np.arange(n).astype(str)).astype(object)


def _draw_prototypes(rng: np.random.Generator, k: int, d: int, min_distance: float) -> np.ndarray:
    """K points ~ N(0, I/d) with every pairwise distance >= min_distance (rejection sampling)."""
    iu = np.triu_indices(k, 1)
    for _ in range(_PROTOTYPE_BATCHES):
        sets = rng.normal(0.0, 1.0 / np.sqrt(d), size=(_PROTOTYPE_BATCH, k, d))
        distances = np.linalg.norm(sets[:, :, None, :] - sets[:, None, :, :], axis=-1)[:, iu[0], iu[1]]
        ok = np.flatnonzero((distances >= min_distance).all(axis=1))
        if len(ok):
            return sets[ok[0]]
    raise ValueError(
        f"could not draw {k} prototypes ~ N(0, I/{d}) at pairwise distance >= {min_distance} in "
        f"{_PROTOTYPE_BATCH * _PROTOTYPE_BATCHES} tries (typical distances are about sqrt(2)); "
        "lower min_prototype_distance or the number of prototypes"
    )


def _draw_weights(rng: np.random.Generator, n: int, k: int, setting: str, mixture: str) -> np.ndarray:
    if setting == "partition":
        return np.eye(k)[rng.integers(k, size=n)]
    if setting == "groups":
        return np.eye(k)[rng.permutation(np.arange(n) % k)]
    if mixture == "dirichlet":
        return rng.dirichlet(np.ones(k), size=n)
    return softmax(rng.normal(size=(n, k)), axis=1)


@dataclass(frozen=True)
class _Rows:
    """One split's comparisons; indices are local to this split's fresh vectors (or into the pools)."""

    user: np.ndarray
    left: np.ndarray
    right: np.ndarray
    context: np.ndarray
    item_vectors: np.ndarray  # fresh items of this split ([0, d] with a pool)
    context_vectors: np.ndarray  # fresh contexts of this split ([0, d] with a pool or for PAL-A)


def _draw_rows(
    rng: np.random.Generator,
    n_users: int,
    per_user: int,
    d: int,
    model: str,
    item_pool: np.ndarray | None,
    context_pool: np.ndarray | None,
) -> _Rows:
    n = n_users * per_user
    user = np.repeat(np.arange(n_users, dtype=np.int64), per_user)
    empty = np.zeros((0, d), dtype=np.float32)
    if item_pool is None:
        fresh_items = _gaussian(rng, 2 * n, d)
        left, right = np.arange(0, 2 * n, 2, dtype=np.int64), np.arange(1, 2 * n, 2, dtype=np.int64)
    else:
        # Two distinct pool items: the second is offset from the first by 1..n_items-1 (mod n_items).
        size = len(item_pool)
        left = rng.integers(size, size=n)
        right = (left + rng.integers(1, size, size=n)) % size
        fresh_items = empty
    if model == "pal_a":
        context, fresh_contexts = np.zeros(n, dtype=np.int64), empty
    elif context_pool is None:
        context, fresh_contexts = np.arange(n, dtype=np.int64), _gaussian(rng, n, d)
    else:
        context, fresh_contexts = rng.integers(len(context_pool), size=n), empty
    return _Rows(user, left, right, context, fresh_items, fresh_contexts)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _margin_rows(
    truth: _Truth,
    items: np.ndarray,
    contexts: np.ndarray,
    user: np.ndarray,
    context: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """r_u(left) - r_u(right) per row, from the stored (float32) vectors in float64."""
    x_l, x_r = items[left].astype(np.float64), items[right].astype(np.float64)
    if truth.model == "pal_a":
        ideal = weights @ truth.prototypes  # [n_users, d]
        f_ideal = (ideal @ truth.f.T)[user]
        d_l = np.square(x_l @ truth.f.T - f_ideal).sum(-1)
        d_r = np.square(x_r @ truth.f.T - f_ideal).sum(-1)
        return d_r - d_l
    diff = _unit(x_l @ truth.f.T) - _unit(x_r @ truth.f.T)
    out = np.empty(len(user))
    # PAL-B: g*_k on the distinct contexts of a block of rows, then gathered; blocks bound the [rows, K, d]
    # temporaries.
    for s in range(0, len(user), _BLOCK_ROWS):
        block = slice(s, s + _BLOCK_ROWS)
        used, pos = np.unique(context[block], return_inverse=True)
        g = _unit(np.einsum("kij,cj->cki", truth.prototypes, contexts[used].astype(np.float64)))
        z = np.einsum("nk,nkd->nd", weights[user[block]], g[pos])
        out[block] = (diff[block] * z).sum(-1)
    return out


def _margins(truth: _Truth, data: PreferenceData, weights: np.ndarray) -> np.ndarray:
    assert data.item_vectors is not None and data.context_vectors is not None
    return _margin_rows(
        truth,
        data.item_vectors,
        data.context_vectors,
        data.user,
        data.context,
        data.chosen,
        data.rejected,
        weights,
    )


def _labels(margin: np.ndarray, noise: float | None, rng: np.random.Generator) -> np.ndarray:
    """Whether the left item is preferred: the sign of the margin, or a BTL draw at temperature ``noise``."""
    if noise is None:
        return margin > 0
    return rng.random(len(margin)) < expit(margin / noise)


def write_synthetic(dataset: SyntheticDataset, out_dir: str | Path) -> dict[Path, int]:
    """Write the splits as JSONL preference files plus ``vectors.npz`` (item and context vectors keyed by
    their names, for ``--encoder vectors.npz``) and ``truth.json``; returns each file with its row count.

    PAL-A data has no prompts (every prompt is empty), so models trained on it use no context features.
    """
    from pluralign.data.readers import write_preferences
    from pluralign.encoders.precomputed import save_vectors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[Path, int] = {}
    splits = {
        "train": dataset.train,
        "val": dataset.val,
        "test": dataset.test,
        "unseen_adapt": dataset.unseen,
        "unseen_test": dataset.unseen_test,
    }
    for name, part in splits.items():
        if part is not None and len(part):
            files[write_preferences(part, out / f"{name}.jsonl")] = len(part)
    keys = list(dataset.train.items)
    vectors = [dataset.train.item_vectors]
    if dataset.train.context_dim:
        keys += list(dataset.train.contexts)
        vectors.append(dataset.train.context_vectors)
    files[save_vectors(out / "vectors.npz", np.asarray(keys, dtype=str), np.concatenate(vectors))] = len(keys)
    truth = {
        "model": dataset.model,
        "setting": dataset.setting,
        "noise": dataset.noise,
        "n_prototypes": dataset.n_prototypes,
        "bayes_accuracy": dataset.bayes_accuracy,
        "user_ids": list(map(str, dataset.train.user_ids)),
        "true_weights": dataset.true_weights.tolist(),
    }
    atomic_write_json(out / "truth.json", truth, indent=None)
    files[out / "truth.json"] = len(truth["user_ids"])
    return files
