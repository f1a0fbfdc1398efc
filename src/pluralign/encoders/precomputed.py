"""Precomputed vectors as an encoder: a validated lookup table from text to vector, read from NPZ or Parquet.

NPZ files hold arrays ``keys`` (unicode strings, dtype ``U``) and ``vectors`` ([n, D]); they are read with
``allow_pickle=False``, so object arrays are refused. Parquet files hold a string column ``key`` (or ``id``
or ``text``) and a list column ``vector`` (or ``embedding``) of equal-length numeric lists.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import Path
from tokenize import TokenError
from typing import BinaryIO

import numpy as np
import pandas as pd

from pluralign.atomic import atomic_write
from pluralign.errors import DataError, PluralignError

KEY_COLUMNS = ("key", "id", "text")
VECTOR_COLUMNS = ("vector", "embedding")
SUFFIXES = (".npz", ".parquet")
# What numpy's .npy header parser (ast.literal_eval) raises on a damaged header, besides ValueError.
_HEADER_ERRORS = (SyntaxError, TokenError, TypeError, RecursionError, MemoryError)


class PrecomputedEncoder:
    """Looks texts up in a table of precomputed vectors; an unknown text is a ``DataError``.

    ``id`` is ``"precomputed:"`` plus the first 16 hex digits of the sha256 of the file (or, in memory, of
    the keys and vectors), so editing the file never reuses stale cached vectors. Identical duplicate keys
    are merged; duplicates with different vectors are an error.
    """

    # A lookup is as cheap as a cache hit: copying the table into the embedding cache would only cost disk.
    cacheable = False

    def __init__(
        self,
        keys: Sequence[str] | np.ndarray,
        vectors: np.ndarray,
        *,
        id: str | None = None,
        path: str | Path | None = None,
        key_field: str = "keys",
        vector_field: str = "vectors",
    ) -> None:
        self.path = None if path is None else Path(path)
        keys, vectors = _validate(keys, vectors, self.path, key_field, vector_field)
        self._keys = keys
        self._vectors = vectors
        self._index = pd.Index(keys, dtype=object)
        self.id = id if id is not None else "precomputed:" + _table_digest(keys, vectors)

    @classmethod
    def from_file(cls, path: str | Path) -> PrecomputedEncoder:
        """Read and validate an ``.npz`` or ``.parquet`` file of keys and vectors."""
        path = Path(path).expanduser()
        if path.suffix not in SUFFIXES:
            raise DataError(f"precomputed vectors must be a {' or '.join(SUFFIXES)} file", path=path)
        if not path.is_file():
            raise DataError("file of precomputed vectors not found", path=path)
        digest = _file_digest(path)
        if path.suffix == ".npz":
            keys, vectors, fields = _read_npz(path)
        else:
            keys, vectors, fields = _read_parquet(path)
        return cls(
            keys,
            vectors,
            id=f"precomputed:{digest}",
            path=path.resolve(),
            key_field=fields[0],
            vector_field=fields[1],
        )

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        return f"PrecomputedEncoder({where}, {len(self)} keys, dim={self.dim})"

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    @property
    def keys(self) -> np.ndarray:
        """The distinct keys (object array of str), in file order."""
        return self._keys

    @property
    def vectors(self) -> np.ndarray:
        """Vectors [len(keys), dim] float32, row ``i`` for ``keys[i]``."""
        return self._vectors

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """The stored vectors of ``texts`` (float32 [len(texts), dim]); ``DataError`` if any is missing."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = self._index.get_indexer(pd.Index(texts, dtype=object))
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            first = texts[missing[0]]
            shown = first if len(first) <= 80 else first[:77] + "..."
            raise DataError(
                f"{len(missing)} of {len(texts)} texts have no precomputed vector; first missing: {shown!r}",
                path=self.path,
            )
        return self._vectors[rows]


def save_vectors(path: str | Path, keys: Sequence[str] | np.ndarray, vectors: np.ndarray) -> Path:
    """Write keys and float32 vectors to ``.npz`` or ``.parquet`` atomically (a crash leaves the old file)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise PluralignError(f"{path}: vector files must end in {' or '.join(SUFFIXES)}")
    keys, vectors = _validate(keys, vectors, path, "keys", "vectors")

    def write(f: BinaryIO) -> None:
        if path.suffix == ".npz":
            np.savez(f, keys=keys.astype(str), vectors=vectors)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
            table = pa.table({"key": pa.array(keys.tolist(), pa.string()), "vector": column})
            # page checksums: a damaged byte is a read error, not a different vector (NPZ has zip CRCs)
            pq.write_table(table, f, write_page_checksum=True)

    return atomic_write(path, write)


# --- reading ---------------------------------------------------------------------------------------------
def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, *_HEADER_ERRORS) as exc:
        raise DataError(f"cannot read NPZ file: {exc}", path=path) from exc
    with archive:
        names = set(archive.files)
        for name in ("keys", "vectors"):
            if name not in names:
                raise DataError(
                    f"NPZ file has no array '{name}' (found: {', '.join(sorted(names)) or 'none'}); expected "
                    "arrays 'keys' (unicode strings) and 'vectors' ([n, D] floats)",
                    path=path,
                )
        arrays = {}
        for name in ("keys", "vectors"):
            try:
                arrays[name] = archive[name]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise DataError(
                        "array is stored with dtype object, which would need pickle to load (refused: pickle "
                        "can run code); save strings as unicode, e.g. np.savez(path, keys=np.asarray(keys, "
                        "dtype=str), vectors=vectors)",
                        path=path,
                        field=name,
                    ) from exc
                raise DataError(f"cannot read array: {exc}", path=path, field=name) from exc
            except (OSError, zipfile.BadZipFile, EOFError, *_HEADER_ERRORS) as exc:
                raise DataError(f"cannot read array: {exc!r}", path=path, field=name) from None
    keys = arrays["keys"]
    if keys.ndim != 1:
        raise DataError(f"keys must be 1-dimensional, got shape {keys.shape}", path=path, field="keys")
    if keys.dtype.kind == "S":
        try:
            keys = np.char.decode(keys, "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"byte-string keys are not UTF-8: {exc}", path=path, field="keys") from exc
    if keys.dtype.kind != "U":
        raise DataError(
            f"keys must be unicode strings (dtype U), got dtype {keys.dtype}", path=path, field="keys"
        )
    return keys.astype(object), arrays["vectors"], ("keys", "vectors")


def _read_parquet(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file: {exc}", path=path) from exc
    names = schema.names
    key_col = next((c for c in KEY_COLUMNS if c in names), None)
    vec_col = next((c for c in VECTOR_COLUMNS if c in names), None)
    if key_col is None or vec_col is None:
        raise DataError(
            f"expected a string column {'/'.join(KEY_COLUMNS)} and a list column "
            f"{'/'.join(VECTOR_COLUMNS)}; found columns: {', '.join(names) or 'none'}",
            path=path,
        )
    try:
        table = pq.read_table(path, columns=[key_col, vec_col], page_checksum_verification=True)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file: {exc}", path=path) from exc

    key_arr = table.column(key_col).combine_chunks()
    if not (pa.types.is_string(key_arr.type) or pa.types.is_large_string(key_arr.type)):
        if pa.types.is_string_view(key_arr.type):
            key_arr = key_arr.cast(pa.large_string())
        else:
            raise DataError(f"keys must be strings, got type {key_arr.type}", path=path, field=key_col)
    if key_arr.null_count:
        row = int(np.flatnonzero(key_arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError("key is null", path=path, line=row + 1, field=key_col)
    keys = np.asarray(key_arr.to_pylist(), dtype=object)

    vec_arr = table.column(vec_col).combine_chunks()
    kind = vec_arr.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise DataError(f"vectors must be a list column, got type {kind}", path=path, field=vec_col)
    value_type = kind.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
        raise DataError(f"vector values must be numbers, got type {value_type}", path=path, field=vec_col)
    n = len(vec_arr)
    if vec_arr.null_count:
        row = int(np.flatnonzero(vec_arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"vector of key {_short(keys[row])} is null", path=path, line=row + 1, field=vec_col)
    lengths = (
        np.full(n, kind.list_size, dtype=np.int64)
        if pa.types.is_fixed_size_list(kind)
        else vec_arr.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    )
    if n and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(
            f"vector of key {_short(keys[row])} has {lengths[row]} values, but row 1 has {lengths[0]}",
            path=path,
            line=row + 1,
            field=vec_col,
        )
    values = vec_arr.flatten()
    if values.null_count:
        flat = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        row = int(np.searchsorted(np.cumsum(lengths), flat, side="right"))
        raise DataError(
            f"vector of key {_short(keys[row])} has a null value", path=path, line=row + 1, field=vec_col
        )
    dim = int(lengths[0]) if n else 0
    vectors = values.to_numpy(zero_copy_only=False).reshape(n, dim)
    return keys, vectors, (key_col, vec_col)


# --- validation ------------------------------------------------------------------------------------------
def _validate(
    keys: Sequence[str] | np.ndarray,
    vectors: np.ndarray,
    path: Path | None,
    key_field: str,
    vector_field: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Keys as an object array of distinct str and vectors as C-contiguous float32 [n, D] (D > 0)."""
    keys = np.asarray(keys, dtype=object) if not isinstance(keys, np.ndarray) else keys.astype(object)
    try:
        vectors = np.asarray(vectors)
    except ValueError as exc:  # rows of different lengths
        raise DataError(f"vectors must be an [n, D] array: {exc}", path=path, field=vector_field) from None
    if keys.ndim != 1:
        raise DataError(f"keys must be 1-dimensional, got shape {keys.shape}", path=path, field=key_field)
    if len(keys) == 0:
        raise DataError("no precomputed vectors (the table is empty)", path=path)
    if vectors.ndim != 2:
        raise DataError(
            f"vectors must be a 2-dimensional [n, D] array, got shape {vectors.shape}",
            path=path,
            field=vector_field,
        )
    if vectors.shape[0] != len(keys):
        raise DataError(f"{vectors.shape[0]} vectors for {len(keys)} keys", path=path, field=vector_field)
    if vectors.shape[1] == 0:
        raise DataError("vectors have 0 dimensions", path=path, field=vector_field)
    if vectors.dtype.kind not in "fiu":
        raise DataError(f"vectors must be numbers, got dtype {vectors.dtype}", path=path, field=vector_field)
    not_str = [i for i, k in enumerate(keys) if not isinstance(k, str)]
    if not_str:
        row = not_str[0]
        raise DataError(
            f"key {keys[row]!r} is a {type(keys[row]).__name__}, not a string",
            path=path,
            line=row + 1,
            field=key_field,
        )
    with np.errstate(over="ignore"):
        vectors32 = np.ascontiguousarray(vectors, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(vectors32).all(axis=1))
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"vector of key {_short(keys[row])} is not finite (NaN, inf, or too large for float32); "
            f"{len(bad)} such row(s) in total",
            path=path,
            line=row + 1,
            field=vector_field,
        )
    codes, uniques = pd.factorize(keys)
    if len(uniques) < len(keys):
        _, first = np.unique(codes, return_index=True)
        dup = np.flatnonzero(pd.Series(codes).duplicated().to_numpy())
        original = first[codes[dup]]
        differ = (vectors32[dup] != vectors32[original]).any(axis=1)
        if differ.any():
            row, other = int(dup[differ][0]), int(original[differ][0])
            raise DataError(
                f"key {_short(keys[row])} appears again (first in row {other + 1}) with a different vector",
                path=path,
                line=row + 1,
                field=key_field,
            )
        keep = np.sort(first)
        keys, vectors32 = keys[keep], vectors32[keep]
    return keys, vectors32


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:16]


def _table_digest(keys: np.ndarray, vectors: np.ndarray) -> str:
    digest = hashlib.sha256()
    for key in keys:
        encoded = key.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    digest.update(str(vectors.shape).encode())
    digest.update(vectors.tobytes())
    return digest.hexdigest()[:16]
