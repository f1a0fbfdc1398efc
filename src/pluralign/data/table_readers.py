"""The column-oriented readers: Parquet files, HF datasets (in memory or saved to disk) and data frames.

Each returns a :class:`~pluralign.data.raw.Raw` whose lines are 1-based row numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pluralign.data.raw import KNOWN_TYPES, Raw, resolve_columns, with_prompt
from pluralign.errors import DataError
from pluralign.extras import require


def raw_from_parquet(path: Path, where: str) -> Raw:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        columns = resolve_columns(names, where)
        table = pq.read_table(path, columns=list(columns.values()))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read Parquet file: {exc}", path=where) from exc
    return _raw_from_table(table, columns, where)


def raw_from_hf_dir(path: Path, where: str) -> Raw:
    datasets = require("datasets", "datasets")

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(
            f"directory is not a dataset saved by datasets' save_to_disk ({KNOWN_TYPES}): {exc}", path=where
        ) from exc
    return raw_from_hf(dataset, where)


def raw_from_hf(dataset: Any, where: str) -> Raw:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        splits = ", ".join(dataset)
        raise DataError(
            f"got a DatasetDict with splits [{splits}]: pass one split (e.g. dataset['train'], or the "
            "split's subdirectory when reading from disk)",
            path=where,
        )
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    columns = resolve_columns(dataset.column_names, where)
    # select_columns + the arrow format applies any indices mapping (after shuffle/select) without copies
    # of unused columns.
    table = dataset.select_columns(list(columns.values())).with_format("arrow")[:]
    return _raw_from_table(table, columns, where)


def _raw_from_table(table: pa.Table, columns: dict[str, str], where: str) -> Raw:
    for canon, name in columns.items():
        try:  # Parquet strings are not checked for UTF-8 on reading
            table.column(name).validate(full=True)
        except pa.ArrowInvalid as exc:
            raise DataError(f"invalid values ({exc})", path=where, field=canon) from exc
    # integer_object_nulls: an int column with a null must not turn into floats (user 3 -> "3.0")
    values = {
        canon: table.column(name).to_pandas(integer_object_nulls=True) for canon, name in columns.items()
    }
    return Raw(with_prompt(values, table.num_rows), np.arange(1, table.num_rows + 1), where)


def raw_from_frame(frame: pd.DataFrame, where: str) -> Raw:
    names = [c for c in frame.columns if isinstance(c, str)]
    columns = resolve_columns(names, where)
    values = {canon: frame[name].reset_index(drop=True) for canon, name in columns.items()}
    return Raw(with_prompt(values, len(frame)), np.arange(1, len(frame) + 1), where)


def is_hf_dataset(source: Any) -> bool:
    # Avoid importing datasets (slow) unless the caller already did, which any Dataset instance implies.
    module = sys.modules.get("datasets")
    return module is not None and isinstance(source, module.Dataset | module.DatasetDict)
