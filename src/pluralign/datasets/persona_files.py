"""Persona datasets on disk: a compact, pickle-free directory of Parquet files and a manifest.

:func:`write_persona` saves a :class:`~pluralign.datasets.persona_users.PersonaDataset` (index arrays, not
text: the paper's scale is 40M rows) and :func:`read_persona` loads it back, checking every index and label.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pluralign.atomic import atomic_write
from pluralign.data.comparisons import PreferenceData
from pluralign.datasets.persona_statements import StatementPool, check_persona_names
from pluralign.datasets.persona_users import ITEMS, PersonaDataset, tag_split
from pluralign.errors import DataError
from pluralign.version import __version__

# Rows per chunk when re-checking labels in read_persona (bounds the temporary gathers to ~100 MB).
_CHECK_ROWS = 1 << 22

FORMAT = "pluralign.persona"
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_SPLITS = ("seen", "unseen")
_ROW_COLUMNS = ("user", "context", "chosen", "rejected")


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
        names = check_persona_names(manifest["personas"])
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
        splits[split] = (tag_split(data, pool, persona_of_user, split, settings), persona_of_user)
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
