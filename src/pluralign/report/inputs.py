"""The inputs of `pluralign report`: finding and reading what a run directory holds, checked.

``results.json``, ``metrics.jsonl`` files, checkpoints and ``user_groups.json`` (their format is described in
:mod:`pluralign.report.html`). A malformed file raises :class:`DataError` naming the file and the line or
field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pluralign.errors import DataError

RESULTS, GROUPS, METRICS, MODEL = "results.json", "user_groups.json", "metrics.jsonl", "model"
#: the run's options as `pluralign train --out RUN` writes them (the training file's path among them)
TRAIN_RUN = "train.json"
RESULT_KEYS = ("table", "accuracy_vs_k", "few_shot")

Curves = dict[str, tuple[list[float], list[float], list[float] | None]]


@dataclass
class Checkpoint:
    """A checkpoint found in the run directory and its users' weights (rows: users, columns: w0..w{K-1})."""

    label: str
    path: Path
    config: dict[str, Any]
    weights: pd.DataFrame
    estimator: Any = None  # the loaded PALEstimator (for the explain section)


@dataclass
class MetricsRun:
    """The per-epoch records of one metrics.jsonl."""

    label: str
    path: Path
    records: list[dict[str, float]]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"not valid JSON ({exc.msg}, column {exc.colno})", path=path, line=exc.lineno
        ) from None
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", path=path) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: Any, path: Path, field: str) -> list[float]:
    if not isinstance(value, list) or not value:
        raise DataError("expected a non-empty list of numbers", path=path, field=field)
    if not all(v is None or _is_number(v) for v in value):
        raise DataError("expected numbers (or null)", path=path, field=field)
    return [math.nan if v is None else float(v) for v in value]


def read_curves(spec: Any, path: Path, key: str, x_key: str) -> Curves:
    if not isinstance(spec, dict) or not isinstance(spec.get("series"), dict) or not spec["series"]:
        raise DataError("expected an object with a non-empty 'series' object", path=path, field=key)
    curves: Curves = {}
    for label, series in spec["series"].items():
        field = f"{key}.series.{label}"
        if not isinstance(series, dict):
            raise DataError(f"expected an object with '{x_key}', 'mean' and 'std'", path=path, field=field)
        x = _numbers(series.get(x_key), path, f"{field}.{x_key}")
        mean = _numbers(series.get("mean"), path, f"{field}.mean")
        std = None if series.get("std") is None else _numbers(series["std"], path, f"{field}.std")
        if len(mean) != len(x) or (std is not None and len(std) != len(x)):
            raise DataError(f"'{x_key}', 'mean' and 'std' differ in length", path=path, field=field)
        curves[str(label)] = (x, mean, std)
    for name, check in (("title", str), ("reference_label", str)):
        if spec.get(name) is not None and not isinstance(spec[name], check):
            raise DataError("expected a string", path=path, field=f"{key}.{name}")
    return curves


def read_results(path: Path) -> dict[str, Any]:
    """Read and check results.json; raises DataError naming the file (and line or field) when malformed."""
    results = _read_json(path)
    if not isinstance(results, dict):
        raise DataError("expected a JSON object with 'table', 'accuracy_vs_k' or 'few_shot'", path=path)
    table = results.get("table")
    if table is not None and not (isinstance(table, list) and all(isinstance(row, dict) for row in table)):
        raise DataError("expected a list of objects (one per row)", path=path, field="table")
    if results.get("accuracy_vs_k") is not None:
        spec = results["accuracy_vs_k"]
        read_curves(spec, path, "accuracy_vs_k", "k")
        true_k = spec.get("true_k")
        if true_k is not None and not (isinstance(true_k, int) and not isinstance(true_k, bool)):
            raise DataError("expected an integer or null", path=path, field="accuracy_vs_k.true_k")
    if results.get("few_shot") is not None:
        spec = results["few_shot"]
        read_curves(spec, path, "few_shot", "shots")
        if spec.get("reference") is not None and not _is_number(spec["reference"]):
            raise DataError("expected a number or null", path=path, field="few_shot.reference")
    return results


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Per-epoch records of a metrics.jsonl; raises DataError naming the file and line when malformed."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", path=path) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg})", path=path, line=number) from None
        if not isinstance(record, dict) or not _is_number(record.get("epoch")):
            raise DataError("expected a JSON object with a numeric 'epoch'", path=path, line=number)
        bad = [k for k, v in record.items() if v is not None and not _is_number(v)]
        if bad:
            raise DataError("expected a number or null", path=path, line=number, field=bad[0])
        records.append({k: math.nan if v is None else float(v) for k, v in record.items()})
    return records


def read_user_groups(path: Path) -> dict[str, str]:
    """user_groups.json: a JSON object mapping each user id to a group label (string or number)."""
    groups = _read_json(path)
    if not isinstance(groups, dict):
        raise DataError('expected a JSON object {"user id": "group label", ...}', path=path)
    bad = [u for u, g in groups.items() if not (isinstance(g, str) or _is_number(g))]
    if bad:
        raise DataError("expected a string (or number) group label", path=path, field=str(bad[0]))
    return {str(u): str(g) for u, g in groups.items()}


def _subdirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def label_of(run_dir: Path) -> str:
    """A run directory's label in the report: its folder name (resolved, so "." has one too)."""
    return run_dir.resolve().name or str(run_dir)


def find_checkpoints(run_dir: Path) -> list[tuple[str, Path]]:
    """(label, directory) of RUN_DIR itself if it is a checkpoint, RUN_DIR/model and RUN_DIR/*/model."""
    found = []
    if (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file():
        found.append((label_of(run_dir), run_dir))
    candidates = [(label_of(run_dir), run_dir / MODEL)] + [(d.name, d / MODEL) for d in _subdirs(run_dir)]
    found += [(label, d) for label, d in candidates if (d / "config.json").is_file()]
    return found


def find_metrics(run_dir: Path) -> list[tuple[str, Path]]:
    """(label, file) of RUN_DIR/metrics.jsonl and RUN_DIR/*/metrics.jsonl."""
    candidates = [(label_of(run_dir), run_dir / METRICS)] + [(d.name, d / METRICS) for d in _subdirs(run_dir)]
    return [(label, f) for label, f in candidates if f.is_file()]


def load_checkpoint_weights(label: str, directory: Path) -> Checkpoint:
    """Load a checkpoint's user weights (no encoder is built) and its config."""
    from pluralign.estimator import PALEstimator

    est = PALEstimator.load(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return Checkpoint(label, directory, config, est.user_weights(), est)


def training_data(directory: Path) -> Path | None:
    """The training file of the run a checkpoint belongs to, from ``RUN/train.json`` (written by
    ``pluralign train --out RUN``; the checkpoint is RUN/model), if that file still exists."""
    run = directory.parent if directory.name == MODEL else directory
    try:
        options = json.loads((run / TRAIN_RUN).read_text(encoding="utf-8"))["options"]
        path = Path(options["train_data"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return path if path.is_file() else None
