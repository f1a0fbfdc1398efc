"""The Persona dataset of the PAL paper (App. D.4, Table 7): synthetic users who each hold one persona.

Anthropic's model-written persona statements (Perez et al. 2022, CC BY 4.0; the six Table 7 personas ship in
``persona_data/``, see SOURCE.md there) list, per persona ρ, statements with ``answer_matching_behavior``
``" Yes"`` (the set S(ρ)) or ``" No"``. For K* personas the builder makes synthetic users, each assigned one
persona, and asks each user about statements drawn from the pool of all K* personas' statements: the prompt
is the statement's ``question`` ("Is the following statement something you would say?\\n"..."") and the user
prefers "Yes" over "No" exactly when the statement is in S(own persona), else "No" over "Yes".

Statements that occur more than once (the overlap rule): the pool is the set of *distinct* statements
(exact string match) in the K* files, in order of first appearance (persona order, then line order), so
each becomes one context. A persona's S(ρ) is the set of statements with ``" Yes"`` in ρ's own file; a
statement from another persona's file is a distractor whose answer follows from S(ρ) membership, even when
that other file labels it differently. A statement repeated inside one file with the same answer counts once;
with opposite answers it is a DataError (S(ρ) would be ambiguous), and so is a statement seen with two
different ``question`` texts or two statements sharing one question (the contexts must be one-to-one with
statements). Counts: the six Table 7 files hold 6,000 distinct statements, with no statement repeated
within or across files; 14 pairs differ only in letter case (e.g. "Art is boring" / "art is boring",
always in the same file with the same answer) and are kept as distinct contexts. Across all 135 persona
files of the source, 858 statements occur in more than one file and 116 of those with opposite answers;
the rule above covers them.

Scale: the paper's setting (K* = 4, N = 10,000 users per persona, 1,000 queries each) is 40M comparisons;
rows are generated per persona in fixed chunks of users with vectorized NumPy, so the cost is the four int64
index arrays of :class:`PreferenceData` (32 bytes a row, 1.3 GB) plus a few MB of work space.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pluralign.atomic import atomic_write
from pluralign.data.comparisons import PreferenceData
from pluralign.encoders.base import Encoder
from pluralign.errors import DataError
from pluralign.version import __version__

__all__ = [
    "ITEMS",
    "PERSONAS_BY_K",
    "PersonaDataset",
    "StatementPool",
    "build_persona",
    "load_statements",
    "read_persona",
    "shipped_data_dir",
    "write_persona",
]

_TABLE7 = (
    "interest-in-art",
    "interest-in-literature",
    "interest-in-math",
    "interest-in-music",
    "interest-in-science",
    "interest-in-sports",
)
#: PAL Table 7: the personas used for each "true" number of groups K* (file stems of the source data).
PERSONAS_BY_K: dict[int, tuple[str, ...]] = {k: _TABLE7[:k] for k in range(2, 7)}

#: The items table of every Persona PreferenceData: index 0 is "Yes", index 1 is "No".
ITEMS = ("Yes", "No")
_YES, _NO = " Yes", " No"  # the source spells answers with a leading space
_REQUIRED = ("question", "statement", "answer_matching_behavior")

# Users per sampling chunk. Fixed (not derived from memory) because the random stream, hence the data for a
# seed, must not depend on the machine; 512 rows x 6,000 statements of int16 is 6 MB of work space.
_CHUNK_USERS = 512
# Rows per chunk when re-checking labels in read_persona (bounds the temporary gathers to ~100 MB).
_CHECK_ROWS = 1 << 22

FORMAT = "pluralign.persona"
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_SPLITS = ("seen", "unseen")
_ROW_COLUMNS = ("user", "context", "chosen", "rejected")


# ========================================================================================================
# statements
# ========================================================================================================
@dataclass(frozen=True, eq=False)
class StatementPool:
    """The distinct statements of some persona files and which persona agrees with which.

    Column ``s`` of ``agrees`` ([K, S] bool) is True for persona ``k`` iff statement ``s`` is in S(ρ_k), i.e.
    has ``" Yes"`` in ρ_k's file; ``listed`` ([K, S] bool) says whether it appears in ρ_k's file at all.
    ``questions[s]`` is the prompt shown for ``statements[s]``. ``source`` is the directory read and
    ``n_rows`` the number of (non-blank) lines read.
    """

    personas: tuple[str, ...]
    statements: np.ndarray
    questions: np.ndarray
    agrees: np.ndarray
    listed: np.ndarray
    source: str
    n_rows: int

    def __len__(self) -> int:
        return len(self.statements)

    def members(self, persona: str | int) -> np.ndarray:
        """Indices of S(ρ): the statements persona ``persona`` (name or index) answers "Yes" to."""
        k = persona if isinstance(persona, int) else self.personas.index(persona)
        return np.flatnonzero(self.agrees[k])

    @property
    def n_shared(self) -> int:
        """Statements listed in more than one persona's file."""
        return int((self.listed.sum(axis=0) > 1).sum())

    @property
    def n_conflicting(self) -> int:
        """Statements that one listing file answers " Yes" and another " No"."""
        return int((self.agrees.any(axis=0) & (self.listed & ~self.agrees).any(axis=0)).sum())

    @property
    def n_repeated_rows(self) -> int:
        """Lines repeating a statement already listed in the same file (same answer; counted once)."""
        return self.n_rows - int(self.listed.sum())


def shipped_data_dir() -> Traversable:
    """The directory of persona files shipped with pluralign (the six Table 7 personas)."""
    return importlib.resources.files("pluralign.datasets").joinpath("persona_data")


def load_statements(
    personas: Sequence[str], data_dir: str | os.PathLike[str] | Traversable | None = None
) -> StatementPool:
    """Read ``<data_dir>/<persona>.jsonl`` for each persona into a :class:`StatementPool`.

    ``data_dir`` defaults to the shipped data (:func:`shipped_data_dir`); point it at a copy of the source's
    ``persona/`` folder for the other personas. Every line is validated: it must be a JSON object with a
    non-empty string ``question`` and ``statement`` and ``answer_matching_behavior`` exactly ``" Yes"`` or
    ``" No"`` (``answer_not_matching_behavior``, if present, must be the other one); blank lines are
    skipped. Problems raise :class:`DataError` with the file, 1-based line and field. Duplicates follow the
    module's overlap rule.
    """
    names = _check_persona_names(personas)
    root = shipped_data_dir() if data_dir is None else data_dir
    if not isinstance(root, Traversable):
        root = Path(root)
    if not root.is_dir():
        raise DataError("persona data directory does not exist", path=str(root))

    statements: list[str] = []
    questions: list[str] = []
    by_statement: dict[str, int] = {}
    by_question: dict[str, int] = {}
    first_at: list[str] = []  # "file:line" of each statement's first occurrence, for messages
    agrees: list[dict[int, bool]] = []
    n_rows = 0
    for persona in names:
        path = root.joinpath(f"{persona}.jsonl")
        if not path.is_file():
            raise DataError(_missing_file_message(persona, root), path=str(path))
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read persona file: {exc.strerror or exc}", path=str(path)) from exc
        answers: dict[int, bool] = {}
        line_of: dict[int, int] = {}
        for line, (question, statement, yes) in _records(raw, str(path)):
            n_rows += 1
            s = by_statement.get(statement)
            if s is None:
                other = by_question.get(question)
                if other is not None:
                    raise DataError(
                        f"a different statement at {first_at[other]} has the same question",
                        path=str(path),
                        line=line,
                        field="question",
                    )
                s = len(statements)
                statements.append(statement)
                questions.append(question)
                by_statement[statement] = by_question[question] = s
                first_at.append(f"{path}:{line}")
            elif questions[s] != question:
                raise DataError(
                    f"the same statement at {first_at[s]} has a different question",
                    path=str(path),
                    line=line,
                    field="question",
                )
            if s in answers:
                if answers[s] != yes:
                    raise DataError(
                        f"the statement is repeated from line {line_of[s]} with the opposite answer",
                        path=str(path),
                        line=line,
                        field="answer_matching_behavior",
                    )
                continue
            answers[s] = yes
            line_of[s] = line
        if not answers:
            raise DataError("persona file has no statements", path=str(path))
        agrees.append(answers)

    n = len(statements)
    agree = np.zeros((len(names), n), dtype=bool)
    listed = np.zeros((len(names), n), dtype=bool)
    for k, answers in enumerate(agrees):
        idx = np.fromiter(answers.keys(), dtype=np.int64, count=len(answers))
        listed[k, idx] = True
        agree[k, idx] = np.fromiter(answers.values(), dtype=bool, count=len(answers))
    return StatementPool(
        personas=names,
        statements=np.asarray(statements, dtype=object),
        questions=np.asarray(questions, dtype=object),
        agrees=agree,
        listed=listed,
        source=str(root),
        n_rows=n_rows,
    )


def _check_persona_names(personas: Sequence[str]) -> tuple[str, ...]:
    if isinstance(personas, str):
        raise TypeError("personas must be a sequence of persona names, not a single string")
    names = tuple(personas)
    if not names:
        raise ValueError("at least one persona is needed")
    for name in names:
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"persona names are file stems such as 'interest-in-art', got {name!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"persona(s) listed more than once: {', '.join(repeated)}")
    return names


def _missing_file_message(persona: str, root: Path | Traversable) -> str:
    available = sorted(p.name[: -len(".jsonl")] for p in root.iterdir() if p.name.endswith(".jsonl"))
    shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
    message = (
        f"no file for persona '{persona}' ({persona}.jsonl) in {root}; it has {len(available)} persona(s)"
    )
    message += f": {shown}" if available else ""
    if str(root) == str(shipped_data_dir()):
        message += "; the shipped data holds only the Table 7 personas, pass data_dir= for the others"
    return message


def _records(raw: bytes, path: str) -> list[tuple[int, tuple[str, str, bool]]]:
    """Validated (line, (question, statement, agrees)) of each non-blank line."""
    out = []
    for line, chunk in enumerate(raw.split(b"\n"), start=1):
        if not chunk.strip():
            continue
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"not valid UTF-8 ({exc.reason})", path=path, line=line) from exc
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=line) from exc
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
        for key in _REQUIRED:
            if key not in obj:
                raise DataError("missing", path=path, line=line, field=key)
        for key in ("question", "statement"):
            value = obj[key]
            if not isinstance(value, str):
                raise DataError(f"expected a string, got {value!r}", path=path, line=line, field=key)
            if not value.strip():
                raise DataError("empty", path=path, line=line, field=key)
        answer = obj["answer_matching_behavior"]
        if answer not in (_YES, _NO):
            raise DataError(
                f"expected ' Yes' or ' No', got {answer!r}",
                path=path,
                line=line,
                field="answer_matching_behavior",
            )
        if "answer_not_matching_behavior" in obj and obj["answer_not_matching_behavior"] != (
            _NO if answer == _YES else _YES
        ):
            raise DataError(
                f"must be the opposite of answer_matching_behavior ({answer!r}), "
                f"got {obj['answer_not_matching_behavior']!r}",
                path=path,
                line=line,
                field="answer_not_matching_behavior",
            )
        out.append((line, (obj["question"], obj["statement"], answer == _YES)))
    return out


# ========================================================================================================
# synthetic users
# ========================================================================================================
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
        seen=_tag(seen, pool, seen_persona, "seen", settings),
        unseen=_tag(unseen, pool, unseen_persona, "unseen", settings),
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
        names = _check_persona_names(personas)
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


def _tag(
    data: PreferenceData, pool: StatementPool, persona_of_user: np.ndarray, split: str, settings: dict
) -> PreferenceData:
    meta = {
        "dataset": "persona",
        "split": split,
        "personas": pool.personas,
        "persona_of_user": persona_of_user,
        "settings": settings,
    }
    return replace(data, source=f"persona:{split}", meta=meta)


# ========================================================================================================
# on disk
# ========================================================================================================
def write_persona(dataset: PersonaDataset, out_dir: str | os.PathLike[str]) -> Path:
    """Save ``dataset`` to the directory ``out_dir`` in a compact, pickle-free format; returns it.

    Files (Parquet, zstd): ``statements.parquet`` (``statement``, ``question``, and bool columns
    ``agrees.<persona>`` and ``listed.<persona>``; row s is context s), ``seen.parquet`` and
    ``unseen.parquet`` (int64 ``user``, ``context``, ``chosen``, ``rejected``: indices into the users file,
    statements file and ``items``), ``seen_users.parquet`` and ``unseen_users.parquet`` (``user_id``,
    int64 ``persona``), and ``manifest.json`` (format, version, personas, items, settings, counts).
    Row files are index arrays, not text, because the paper's scale is 40M rows (~8 GB as JSONL); for a
    small build, ``pluralign.data.readers.write_preferences(dataset.seen, "seen.jsonl")`` writes text rows.
    Embeddings (``item_vectors``/``context_vectors``) are not saved. Each file is written to a temporary
    name and renamed; the manifest is removed first and written last, so a directory with a manifest is
    complete.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MANIFEST).unlink(missing_ok=True)
    pool = dataset.pool
    columns: dict[str, Any] = {
        "statement": pa.array(pool.statements.tolist(), type=pa.string()),
        "question": pa.array(pool.questions.tolist(), type=pa.string()),
    }
    for k, persona in enumerate(pool.personas):
        columns[f"agrees.{persona}"] = pool.agrees[k]
    for k, persona in enumerate(pool.personas):
        columns[f"listed.{persona}"] = pool.listed[k]
    _write_parquet(out / "statements.parquet", pa.table(columns))
    for split in _SPLITS:
        data: PreferenceData = getattr(dataset, split)
        persona_of_user = getattr(dataset, f"{split}_persona_of_user")
        _write_parquet(
            out / f"{split}.parquet",
            pa.table({name: np.ascontiguousarray(getattr(data, name), np.int64) for name in _ROW_COLUMNS}),
        )
        users = pa.table(
            {
                "user_id": pa.array([str(u) for u in data.user_ids], type=pa.string()),
                "persona": np.asarray(persona_of_user, dtype=np.int64),
            }
        )
        _write_parquet(out / f"{split}_users.parquet", users)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "written_by": f"pluralign {__version__}",
        "personas": list(pool.personas),
        "items": list(ITEMS),
        "settings": dataset.settings,
        "statements": len(pool),
        "statement_rows_read": pool.n_rows,
        "statement_source": pool.source,
        "rows": {split: len(getattr(dataset, split)) for split in _SPLITS},
        "users": {split: getattr(dataset, split).n_users for split in _SPLITS},
    }
    payload = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    atomic_write(out / _MANIFEST, lambda handle: handle.write(payload))
    return out


def read_persona(directory: str | os.PathLike[str]) -> PersonaDataset:
    """Load a directory written by :func:`write_persona`, checking indices and labels.

    Every row must index valid users, statements and items, and its label must follow the rule (chosen is
    "Yes" iff the statement is in S(user's persona)); otherwise :class:`DataError` names the file, the
    1-based row and the column.
    """
    root = Path(directory)
    manifest_path = root / _MANIFEST
    if not manifest_path.is_file():
        raise DataError(
            "not a complete Persona dataset directory (no manifest.json; write it with write_persona)",
            path=root,
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read manifest: {exc}", path=manifest_path) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"not a '{FORMAT}' manifest", path=manifest_path, field="format")
    if manifest.get("version") != FORMAT_VERSION:
        raise DataError(
            f"unsupported version {manifest.get('version')!r} (this pluralign reads {FORMAT_VERSION})",
            path=manifest_path,
            field="version",
        )
    try:
        names = _check_persona_names(manifest["personas"])
        items = tuple(manifest["items"])
        settings = {str(k): int(v) for k, v in manifest["settings"].items()}
        rows = {s: int(manifest["rows"][s]) for s in _SPLITS}
        n_users = {s: int(manifest["users"][s]) for s in _SPLITS}
        pool_rows = int(manifest.get("statement_rows_read", 0))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"malformed manifest: {exc!r}", path=manifest_path) from exc
    if items != ITEMS:
        raise DataError(f"items must be {list(ITEMS)}, got {list(items)}", path=manifest_path, field="items")

    path = root / "statements.parquet"
    table = _read_parquet(path)
    statements = _strings(table, "statement", path)
    questions = _strings(table, "question", path)
    agrees = np.stack([_column(table, f"agrees.{p}", path, bool) for p in names])
    listed = np.stack([_column(table, f"listed.{p}", path, bool) for p in names])
    bad = np.flatnonzero((agrees & ~listed).any(axis=0))
    if len(bad):
        raise DataError("agrees with a persona whose file does not list it", path=path, line=int(bad[0]) + 1)
    pool = StatementPool(
        personas=names,
        statements=statements,
        questions=questions,
        agrees=agrees,
        listed=listed,
        source=str(manifest.get("statement_source", "")),
        n_rows=pool_rows,
    )

    splits: dict[str, tuple[PreferenceData, np.ndarray]] = {}
    for split in _SPLITS:
        path = root / f"{split}_users.parquet"
        table = _read_parquet(path)
        user_ids = _strings(table, "user_id", path)
        persona_of_user = _column(table, "persona", path, np.int64)
        _check_range(persona_of_user, len(names), path, "persona")
        if len(user_ids) != n_users[split]:
            raise DataError(f"{len(user_ids)} users, the manifest says {n_users[split]}", path=path)
        del table
        path = root / f"{split}.parquet"
        arrays = _read_rows(path)
        if len(arrays["user"]) != rows[split]:
            raise DataError(f"{len(arrays['user'])} rows, the manifest says {rows[split]}", path=path)
        _check_range(arrays["user"], len(user_ids), path, "user")
        _check_range(arrays["context"], len(pool), path, "context")
        _check_labels(arrays, persona_of_user, agrees, path)
        data = PreferenceData(
            **arrays,
            user_ids=user_ids,
            contexts=questions,
            items=np.asarray(ITEMS, dtype=object),
        )
        splits[split] = (_tag(data, pool, persona_of_user, split, settings), persona_of_user)
    return PersonaDataset(
        seen=splits["seen"][0],
        unseen=splits["unseen"][0],
        seen_persona_of_user=splits["seen"][1],
        unseen_persona_of_user=splits["unseen"][1],
        pool=pool,
        settings=settings,
    )


def _write_parquet(path: Path, table: pa.Table) -> None:
    atomic_write(path, lambda handle: pq.write_table(table, handle, compression="zstd"))


def _read_parquet(path: Path) -> pa.Table:
    if not path.is_file():
        raise DataError("missing file of the Persona dataset", path=path)
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file: {exc}", path=path) from exc


def _read_rows(path: Path) -> dict[str, np.ndarray]:
    """The int64 row columns, filled row group by row group so that peak memory stays near the result's."""
    if not path.is_file():
        raise DataError("missing file of the Persona dataset", path=path)
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        for name in _ROW_COLUMNS:
            if name not in schema.names:
                raise DataError("missing column", path=path, field=name)
            if schema.field(name).type != pa.int64():
                raise DataError(f"expected int64, got {schema.field(name).type}", path=path, field=name)
        arrays = {name: np.empty(parquet.metadata.num_rows, dtype=np.int64) for name in _ROW_COLUMNS}
        start = 0
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=list(_ROW_COLUMNS))
            for name in _ROW_COLUMNS:
                arrays[name][start : start + len(table)] = _column(table, name, path, np.int64, offset=start)
            start += len(table)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file: {exc}", path=path) from exc
    return arrays


def _column(table: pa.Table, name: str, path: Path, dtype: type, *, offset: int = 0) -> np.ndarray:
    if name not in table.column_names:
        raise DataError("missing column", path=path, field=name)
    column = table.column(name)
    if column.null_count:
        row = offset + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError("null value", path=path, line=row + 1, field=name)
    want = pa.bool_() if dtype is bool else pa.int64()
    if column.type != want:
        raise DataError(f"expected {want}, got {column.type}", path=path, field=name)
    return column.to_numpy()


def _strings(table: pa.Table, name: str, path: Path) -> np.ndarray:
    if name not in table.column_names:
        raise DataError("missing column", path=path, field=name)
    column = table.column(name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) or column.null_count:
        raise DataError(f"expected non-null strings, got {column.type}", path=path, field=name)
    return np.asarray(column.to_pylist(), dtype=object)


def _check_range(values: np.ndarray, size: int, path: Path, name: str) -> None:
    bad = np.flatnonzero((values < 0) | (values >= size))
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"index {int(values[row])} out of range [0, {size})", path=path, line=row + 1, field=name
        )


def _check_labels(
    arrays: dict[str, np.ndarray], persona_of_user: np.ndarray, agrees: np.ndarray, path: Path
) -> None:
    """Raise on the first row whose chosen/rejected break the rule; chunked to bound the gathers."""
    user, context = arrays["user"], arrays["context"]
    for start in range(0, len(user), _CHECK_ROWS):
        rows = slice(start, start + _CHECK_ROWS)
        expected = (~agrees[persona_of_user[user[rows]], context[rows]]).astype(np.int64)
        for name, want in (("chosen", expected), ("rejected", 1 - expected)):
            bad = np.flatnonzero(arrays[name][rows] != want)
            if len(bad):
                row = start + int(bad[0])
                raise DataError(
                    f"is {int(arrays[name][row])}, but the persona's answer makes it {int(want[bad[0]])} "
                    f"(items: 0 = {ITEMS[0]!r}, 1 = {ITEMS[1]!r})",
                    path=path,
                    line=row + 1,
                    field=name,
                )
