"""Persona synthetic users: the seeded simulation of users who each hold one persona, and the dataset.

:func:`build_persona` assigns users to personas and asks each about statements drawn from the whole
:class:`~pluralign.datasets.persona_statements.StatementPool`; a user prefers "Yes" over "No" exactly when
the statement is in S(own persona). Rows are generated per persona in fixed chunks of users, vectorized.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib.resources.abc import Traversable

import numpy as np

from pluralign.data.comparisons import PreferenceData
from pluralign.datasets.persona_statements import (
    PERSONAS_BY_K,
    StatementPool,
    check_persona_names,
    load_statements,
)
from pluralign.encoders.base import Encoder

#: The items table of every Persona PreferenceData: index 0 is "Yes", index 1 is "No".
ITEMS = ("Yes", "No")

# Users per sampling chunk. Fixed (not derived from memory) because the random stream, hence the data for a
# seed, must not depend on the machine; 512 rows x 6,000 statements of int16 is 6 MB of work space.
_CHUNK_USERS = 512


@dataclass(frozen=True, eq=False)
class PersonaDataset:
    """Seen and unseen synthetic users of the Persona experiment.

    ``seen_persona_of_user[u]`` is the index into ``personas`` of user ``seen.user_ids[u]`` (likewise for
    unseen). Both splits share the contexts (``pool.questions``) and items (:data:`ITEMS`) tables, and
    their ``meta`` holds ``personas``, ``persona_of_user`` and ``split``. ``settings`` records the
    arguments of :func:`build_persona`.
    """

    seen: PreferenceData
    unseen: PreferenceData
    seen_persona_of_user: np.ndarray
    unseen_persona_of_user: np.ndarray
    pool: StatementPool
    settings: dict[str, int] = field(default_factory=dict)

    @property
    def personas(self) -> tuple[str, ...]:
        return self.pool.personas


def build_persona(
    *,
    k_star: int | None = None,
    users_per_persona: int = 10_000,
    queries_per_user: int = 1_000,
    unseen_users_per_persona: int = 1_000,
    unseen_queries_per_user: int = 1_000,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | Traversable | None = None,
    personas: Sequence[str] | None = None,
) -> PersonaDataset:
    """Generate the Persona dataset (PAL App. D.4) for K* personas.

    ``personas`` defaults to ``PERSONAS_BY_K[k_star]`` (Table 7; ``k_star`` defaults to 4); if both are
    given, ``k_star`` must equal ``len(personas)``. Each persona gets ``users_per_persona`` seen users
    ``"p<k>-u<i>"`` with ``queries_per_user`` comparisons each and ``unseen_users_per_persona`` unseen users
    ``"unseen-p<k>-u<i>"`` with ``unseen_queries_per_user`` each (k indexes ``personas``). A user's queries
    are statements drawn uniformly from the whole pool, without replacement when the count is at most the
    pool size and with replacement otherwise, in random order. Rows are grouped by user, users by persona.
    The defaults give the paper's 40M seen comparisons (N = 10,000, n_p = 1,000). The paper makes N unseen
    users per persona too and fits them with up to 1,000 comparisons; the unseen default is 1,000 users
    per persona (4M rows, not 40M) to save memory: pass ``unseen_users_per_persona=10_000`` for the paper's.
    The seen split depends only on ``seed``, the personas and the seen arguments, not on the unseen ones.
    """
    names = _resolve_personas(k_star, personas)
    counts = {
        "users_per_persona": (users_per_persona, 1),
        "queries_per_user": (queries_per_user, 1),
        "unseen_users_per_persona": (unseen_users_per_persona, 0),
        "unseen_queries_per_user": (unseen_queries_per_user, 1),
        "seed": (seed, 0),
    }
    for name, (value, low) in counts.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    pool = load_statements(names, data_dir)
    seen_seq, unseen_seq = np.random.SeedSequence(int(seed)).spawn(2)
    seen, seen_persona = _simulate(pool, int(users_per_persona), int(queries_per_user), seen_seq, "")
    unseen, unseen_persona = _simulate(
        pool, int(unseen_users_per_persona), int(unseen_queries_per_user), unseen_seq, "unseen-"
    )
    settings = {"k_star": len(names), **{name: int(value) for name, (value, _) in counts.items()}}
    return PersonaDataset(
        seen=tag_split(seen, pool, seen_persona, "seen", settings),
        unseen=tag_split(unseen, pool, unseen_persona, "unseen", settings),
        seen_persona_of_user=seen_persona,
        unseen_persona_of_user=unseen_persona,
        pool=pool,
        settings=settings,
    )


def embed_persona(
    dataset: PersonaDataset,
    encoder: Encoder | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    show_progress: bool = False,
) -> PersonaDataset:
    """The dataset with question and answer vectors on both splits (each text embedded once, ever, with
    ``cache_dir``); the default encoder is all-MiniLM-L6-v2."""
    from pluralign.encoders import default_encoder, embed_texts, open_cache

    encoder = encoder or default_encoder()
    cache = open_cache(cache_dir, encoder) if cache_dir is not None else None
    contexts = embed_texts(list(dataset.seen.contexts), encoder, cache=cache, show_progress=show_progress)
    items = embed_texts(list(dataset.seen.items), encoder, cache=cache)
    return replace(
        dataset,
        seen=dataset.seen.with_vectors(items, contexts),
        unseen=dataset.unseen.with_vectors(items, contexts),
    )


def _resolve_personas(k_star: int | None, personas: Sequence[str] | None) -> tuple[str, ...]:
    if personas is not None:
        names = check_persona_names(personas)
        if k_star is not None and k_star != len(names):
            raise ValueError(f"k_star={k_star} but {len(names)} personas were given")
        return names
    k = 4 if k_star is None else k_star
    if k not in PERSONAS_BY_K:
        raise ValueError(f"k_star must be one of {sorted(PERSONAS_BY_K)} (PAL Table 7), got {k_star!r}")
    return PERSONAS_BY_K[k]


def _simulate(
    pool: StatementPool, n: int, q: int, seq: np.random.SeedSequence, prefix: str
) -> tuple[PreferenceData, np.ndarray]:
    """``n`` users per persona with ``q`` queries each; returns the rows and each user's persona."""
    k_count, size = pool.agrees.shape
    n_users = k_count * n
    user = np.repeat(np.arange(n_users, dtype=np.int64), q)
    context = np.empty(n_users * q, dtype=np.int64)
    chosen = np.empty(n_users * q, dtype=np.int64)
    # Shuffling a small-int index row per user is an exact uniform draw without replacement and costs
    # O(pool) per user in C; the narrow dtype halves the memory traffic of the dominant step.
    base = np.arange(size, dtype=np.int16 if size <= np.iinfo(np.int16).max else np.int32)
    for k, child in enumerate(seq.spawn(k_count)):
        rng = np.random.default_rng(child)
        says_no = ~pool.agrees[k]
        for start in range(0, n, _CHUNK_USERS):
            m = min(_CHUNK_USERS, n - start)
            if q <= size:
                draws = rng.permuted(np.broadcast_to(base, (m, size)), axis=1)[:, :q]
            else:
                draws = rng.integers(0, size, size=(m, q))
            rows = slice((k * n + start) * q, (k * n + start + m) * q)
            context[rows] = draws.ravel()
            chosen[rows] = says_no[draws].ravel()  # items: 0 = "Yes", 1 = "No"
    rejected = np.subtract(1, chosen)
    persona_of_user = np.repeat(np.arange(k_count, dtype=np.int64), n)
    user_ids = np.concatenate(
        [np.strings.add(f"{prefix}p{k}-u", np.arange(n).astype(np.str_)) for k in range(k_count)]
    ).astype(object)
    data = PreferenceData(
        user=user,
        context=context,
        chosen=chosen,
        rejected=rejected,
        user_ids=user_ids,
        contexts=pool.questions,
        items=np.asarray(ITEMS, dtype=object),
    )
    return data, persona_of_user


def tag_split(
    data: PreferenceData, pool: StatementPool, persona_of_user: np.ndarray, split: str, settings: dict
) -> PreferenceData:
    """``data`` labelled as Persona split ``split``: its ``source`` and a ``meta`` of personas, settings."""
    meta = {
        "dataset": "persona",
        "split": split,
        "personas": pool.personas,
        "persona_of_user": persona_of_user,
        "settings": settings,
    }
    return replace(data, source=f"persona:{split}", meta=meta)
