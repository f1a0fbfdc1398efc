"""PreferenceData as a directory of .npy arrays that load memory-mapped, for datasets larger than RAM.

Layout: ``user.npy``, ``context.npy``, ``chosen.npy``, ``rejected.npy`` (int64 [n]), ``item_vectors.npy``
and ``context_vectors.npy`` (float32, optional) and ``tables.json`` (format, version, the user ids,
prompts and responses as strings). Every file is written atomically; ``.npy`` is read without pickle.

Loaded with ``mmap=True``, the index arrays and vector tables stay on disk and the kernel pages them in as
training touches them: they count as page cache (evictable), not as the process's own memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pluralign.atomic import atomic_write, atomic_write_json
from pluralign.data.comparisons import PreferenceData
from pluralign.errors import DataError

FORMAT = "pluralign-arrays"
VERSION = 1
INDEX = ("user", "context", "chosen", "rejected")
VECTORS = ("item_vectors", "context_vectors")


def save_arrays(data: PreferenceData, directory: str | Path) -> Path:
    """Write ``data`` (and its vectors, if embedded) as .npy files plus tables.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (*INDEX, *VECTORS):
        array = getattr(data, name)
        if array is None:
            (directory / f"{name}.npy").unlink(missing_ok=True)
            continue
        dtype = np.int64 if name in INDEX else np.float32
        array = np.ascontiguousarray(array, dtype=dtype)
        atomic_write(
            directory / f"{name}.npy", lambda f, a=array: np.lib.format.write_array(f, a, allow_pickle=False)
        )
    tables = {
        "format": FORMAT,
        "version": VERSION,
        "rows": len(data),
        "user_ids": [str(u) for u in data.user_ids],
        "contexts": [str(c) for c in data.contexts],
        "items": [str(i) for i in data.items],
    }
    atomic_write_json(directory / "tables.json", tables, indent=None)  # written last: the commit record
    return directory


def load_arrays(directory: str | Path, *, mmap: bool = True, validate: bool = True) -> PreferenceData:
    """Read a directory written by ``save_arrays``; ``mmap`` maps the arrays instead of reading them.

    ``validate`` checks every index is inside its table and every vector is finite (one sequential pass).
    """
    directory = Path(directory)
    path = directory / "tables.json"
    try:
        tables = json.loads(path.read_text(encoding="utf-8"))
        fmt, version, rows = tables["format"], tables["version"], int(tables["rows"])
        names = {k: np.asarray(tables[k], dtype=object) for k in ("user_ids", "contexts", "items")}
    except FileNotFoundError:
        raise DataError("no tables.json: not a pluralign arrays directory", path=directory) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"unreadable ({exc})", path=path) from None
    if fmt != FORMAT or version != VERSION:
        raise DataError(f"format {fmt!r} version {version} is not {FORMAT!r} version {VERSION}", path=path)
    arrays: dict[str, np.ndarray | None] = {}
    for name in (*INDEX, *VECTORS):
        file = directory / f"{name}.npy"
        if not file.exists():
            if name in INDEX:
                raise DataError("missing", path=file)
            arrays[name] = None
            continue
        try:
            array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable .npy ({exc})", path=file) from None
        want = (np.int64, 1) if name in INDEX else (np.float32, 2)
        if array.dtype != want[0] or array.ndim != want[1]:
            raise DataError(
                f"dtype {array.dtype} with {array.ndim} dims, expected {np.dtype(want[0])}", path=file
            )
        if name in INDEX and len(array) != rows:
            raise DataError(f"{len(array)} rows, tables.json says {rows}", path=file)
        arrays[name] = array
    sizes = {"user": len(names["user_ids"]), "context": len(names["contexts"])}
    sizes["chosen"] = sizes["rejected"] = len(names["items"])
    if validate:
        for name in INDEX:
            array = arrays[name]
            if len(array) and (array.min() < 0 or array.max() >= sizes[name]):
                raise DataError(f"indices outside 0..{sizes[name] - 1}", path=directory / f"{name}.npy")
        for name in VECTORS:
            array = arrays[name]
            if array is not None and not np.isfinite(array).all():
                raise DataError("non-finite vectors", path=directory / f"{name}.npy")
    try:
        return PreferenceData(
            **arrays, user_ids=names["user_ids"], contexts=names["contexts"], items=names["items"],
            source=str(directory),
        )  # fmt: skip
    except ValueError as exc:
        raise DataError(str(exc), path=directory) from None
