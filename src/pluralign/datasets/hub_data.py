"""What a hub recipe produces (:class:`HubData`) and how it is written: rows files readable by
``pluralign.data.read_preferences``, a users file, optionally embedded arrays, and a metadata JSON.

``write_hub(data, DIR)`` writes ``DIR/<part>.<format>`` per part (e.g. ``train.jsonl``), ``DIR/users.csv``,
for embedded data ``DIR/<part>.arrays/`` (``pluralign.data.arrays.save_arrays``) and ``DIR/vectors.npz``
(for ``--encoder DIR/vectors.npz``), and last ``DIR/meta.json``: source, license and attribution from the
dataset card, options, counts, and every skipped record by reason. Each file is written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.atomic import atomic_write_json, atomic_write_text
from pluralign.data.arrays import save_arrays
from pluralign.data.comparisons import PreferenceData
from pluralign.data.readers import write_preferences
from pluralign.encoders.precomputed import save_vectors
from pluralign.errors import DataError
from pluralign.version import __version__

__all__ = ["FORMATS", "Card", "HubData", "write_hub"]

FORMATS = ("jsonl", "csv", "parquet")


@dataclass(frozen=True)
class Card:
    """What the dataset card says: where it lives, its license and how to cite it."""

    repo: str
    url: str
    license: str
    attribution: str
    config: str | None = None
    citation: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "config": self.config,
            "url": self.url,
            "license": self.license,
            "attribution": self.attribution,
            "citation": self.citation,
        }


@dataclass(frozen=True)
class HubData:
    """Preference rows by part (``user_id, prompt, chosen, rejected`` and recipe columns), the users, and
    what went into them. ``skipped`` counts every source record (or pair) that became no row, by reason;
    ``counts`` holds the recipe's other tallies. ``arrays`` holds embedded parts and ``vectors`` a key ->
    vector table (keys, [n, D] float32) for the rows' texts, when the data comes embedded."""

    name: str
    card: Card
    parts: dict[str, pd.DataFrame]
    users: pd.DataFrame
    origin: str
    options: dict[str, Any]
    skipped: dict[str, int]
    counts: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    arrays: dict[str, PreferenceData] = field(default_factory=dict)
    vectors: tuple[np.ndarray, np.ndarray] | None = None

    def rows(self) -> int:
        return sum(len(p) for p in self.parts.values())

    def metadata(self) -> dict[str, Any]:
        return {
            "format": "pluralign.hub/1",
            "pluralign_version": __version__,
            "dataset": self.name,
            "source": {"origin": self.origin, "files": list(self.files), **self.card.as_dict()},
            "options": self.options,
            "rows": {name: len(part) for name, part in self.parts.items()},
            "users": len(self.users),
            "skipped": dict(self.skipped),
            "counts": self.counts,
            "notes": list(self.notes),
        }

    def table(self) -> list[dict[str, Any]]:
        """One line per part (rows, users) for the CLI."""
        return [
            {"part": name, "rows": len(part), "users": int(part["user_id"].nunique()) if len(part) else 0}
            for name, part in self.parts.items()
        ]

    def to_preferences(self, part: str) -> PreferenceData:
        """One part as :class:`PreferenceData` (embedded parts with their vectors)."""
        if part in self.arrays:
            return self.arrays[part]
        return PreferenceData.from_frame(self.parts[part], source=f"{self.name}:{part}")


def with_row_counts(users: pd.DataFrame, parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``users`` (a ``user_id`` column) with ``n_<part>`` columns: each user's rows
    in each part."""
    users = users.copy()
    for name, part in parts.items():
        users[f"n_{name}"] = users["user_id"].map(part["user_id"].value_counts()).fillna(0).astype(np.int64)
    return users


def write_hub(data: HubData, out: str | Path, *, format: str = "jsonl") -> dict[str, Path]:
    """Write ``data`` into the directory ``out`` (created); returns the paths written by kind."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("--out must be a directory (the rows, users and metadata files go into it)", path=out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, part in data.parts.items():
        if len(part):  # an empty part is in meta.json's row counts, with why in 'skipped'
            paths[name] = write_preferences(part.reset_index(drop=True), out / f"{name}.{format}")
    for name, prefs in data.arrays.items():
        paths[f"{name}.arrays"] = save_arrays(prefs, out / f"{name}.arrays")
    if data.vectors is not None:
        keys, vectors = data.vectors
        paths["vectors"] = save_vectors(out / "vectors.npz", keys, vectors)
    paths["users"] = atomic_write_text(out / "users.csv", data.users.to_csv(index=False, lineterminator="\n"))
    meta = data.metadata()
    meta["files"] = {kind: path.name for kind, path in paths.items()}
    paths["metadata"] = atomic_write_json(out / "meta.json", meta)  # last: its presence means complete
    return paths
