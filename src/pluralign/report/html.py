"""`pluralign report RUN_DIR`: one self-contained HTML page (plots inline as PNG data URIs) about a run.

Every input is optional; a section appears when its input exists and the page lists what was missing.

``RUN_DIR/results.json`` (written by experiment runners): a JSON object with any of these keys (others are
ignored)::

    {
      "table": [                                   # flat rows -> one HTML table (columns: union of keys)
        {"model": "PAL-A", "K": 3, "seen_accuracy": 0.93},
        {"model": "BTL", "K": 1, "seen_accuracy": 0.86}
      ],
      "accuracy_vs_k": {                           # paper Fig. 5b / D.5a / D.6a
        "series": {"PAL-A": {"k": [1, 2, 3], "mean": [0.86, 0.9, 0.93], "std": [0.01, 0.01, 0.0]}},
        "true_k": 3,                               # int or null: dashed line at K*
        "title": "synthetic, d = 16"               # optional
      },
      "few_shot": {                                # paper Fig. 5d / D.5c / D.6d
        "series": {"K = 3": {"shots": [0, 5, 40], "mean": [0.8, 0.85, 0.93], "std": [0.02, 0.02, 0.01]}},
        "reference": 0.93,                         # number or null: dashed line, e.g. seen-user accuracy
        "reference_label": "seen users",           # optional
        "title": "unseen users"                    # optional
      }
    }

Table cells are scalars (string, number, bool, null); lists and objects are shown as JSON. In a series,
``std`` may be omitted or null (no error bars), list entries may be null (a gap), and all lists have the
same length.

``RUN_DIR/metrics.jsonl`` and ``RUN_DIR/*/metrics.jsonl``: one JSON object per epoch as the trainer writes
them (``epoch``, ``train_loss``, ``train_accuracy``, ``seconds``, optional ``val_loss``, ``val_accuracy``);
each file is one run, labelled by its folder name.

Checkpoints at ``RUN_DIR/model`` and ``RUN_DIR/*/model`` (or ``RUN_DIR`` itself): their learned user weights
are drawn as a histogram of w0 (K = 2), points on the simplex triangle (K = 3), or a PCA projection with the
K vertices plus per-prototype histograms (K > 3).

``RUN_DIR/user_groups.json``: ``{"user-0": "persona A", ...}``, a group label per user id (e.g. the persona of
each synthetic user); points are colored by group and each group gets a picture of its users' dominant
prototypes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.atomic import atomic_write_text
from pluralign.errors import DataError, PluralignError
from pluralign.report.plots import accuracy_vs_k_axes, few_shot_curves_axes, plt

RESULTS, GROUPS, METRICS, MODEL = "results.json", "user_groups.json", "metrics.jsonl", "model"
RESULT_KEYS = ("table", "accuracy_vs_k", "few_shot")
UNGROUPED = "(no group)"
MAX_GROUP_PANELS = 24

Curves = dict[str, tuple[list[float], list[float], list[float] | None]]

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0 1.2em; }
.note { color: #666; } code { background: #f5f5f5; padding: 0 .2em; }
"""


@dataclass
class Checkpoint:
    """A checkpoint found in the run directory and its users' weights (rows: users, columns: w0..w{K-1})."""

    label: str
    path: Path
    config: dict[str, Any]
    weights: pd.DataFrame


@dataclass
class MetricsRun:
    """The per-epoch records of one metrics.jsonl."""

    label: str
    path: Path
    records: list[dict[str, float]]


# --- reading inputs ---------------------------------------------------------------------------------------
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


def _curves(spec: Any, path: Path, key: str, x_key: str) -> Curves:
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
        _curves(spec, path, "accuracy_vs_k", "k")
        true_k = spec.get("true_k")
        if true_k is not None and not (isinstance(true_k, int) and not isinstance(true_k, bool)):
            raise DataError("expected an integer or null", path=path, field="accuracy_vs_k.true_k")
    if results.get("few_shot") is not None:
        spec = results["few_shot"]
        _curves(spec, path, "few_shot", "shots")
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


def _label(run_dir: Path) -> str:
    return run_dir.resolve().name or str(run_dir)


def find_checkpoints(run_dir: Path) -> list[tuple[str, Path]]:
    """(label, directory) of RUN_DIR itself if it is a checkpoint, RUN_DIR/model and RUN_DIR/*/model."""
    found = []
    if (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file():
        found.append((_label(run_dir), run_dir))
    candidates = [(_label(run_dir), run_dir / MODEL)] + [(d.name, d / MODEL) for d in _subdirs(run_dir)]
    found += [(label, d) for label, d in candidates if (d / "config.json").is_file()]
    return found


def find_metrics(run_dir: Path) -> list[tuple[str, Path]]:
    """(label, file) of RUN_DIR/metrics.jsonl and RUN_DIR/*/metrics.jsonl."""
    candidates = [(_label(run_dir), run_dir / METRICS)] + [(d.name, d / METRICS) for d in _subdirs(run_dir)]
    return [(label, f) for label, f in candidates if f.is_file()]


def load_checkpoint_weights(label: str, directory: Path) -> Checkpoint:
    """Load a checkpoint's user weights (no encoder is built) and its config."""
    from pluralign.estimator import PALEstimator

    est = PALEstimator.load(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return Checkpoint(label, directory, config, est.user_weights())


# --- figures ----------------------------------------------------------------------------------------------
def _mpl(text: str) -> str:
    """Text shown literally by matplotlib: no mathtext, and no legend-hiding leading underscore."""
    text = text.replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def _png(fig: plt.Figure, alt: str) -> str:
    """An <img> tag holding the figure as a base64 PNG data URI; closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def accuracy_vs_k_figure(spec: dict[str, Any], path: Path) -> plt.Figure:
    """Accuracy against K, one line per series, from results.json's ``accuracy_vs_k``."""
    curves = _curves(spec, path, "accuracy_vs_k", "k")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    accuracy_vs_k_axes(
        ax,
        {_mpl(label): curve for label, curve in curves.items()},
        true_k=spec.get("true_k"),
        title=_mpl(spec.get("title") or "accuracy vs number of prototypes"),
    )
    return fig


def few_shot_figure(spec: dict[str, Any], path: Path) -> plt.Figure:
    """Few-shot accuracy of new users, one line per series, from results.json's ``few_shot``."""
    curves = _curves(spec, path, "few_shot", "shots")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    few_shot_curves_axes(
        ax,
        {_mpl(label): curve for label, curve in curves.items()},
        reference=spec.get("reference"),
        reference_label=_mpl(spec.get("reference_label") or "seen users"),
        title=_mpl(spec.get("title") or "new users: accuracy vs comparisons used"),
    )
    return fig


def _group_colors(names: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {name: cmap(i % cmap.N) for i, name in enumerate(n for n in names if n != UNGROUPED)}
    colors[UNGROUPED] = "lightgrey"
    return colors


def _group_order(groups: np.ndarray) -> list[str]:
    names = sorted(set(groups.tolist()) - {UNGROUPED})
    return names + ([UNGROUPED] if UNGROUPED in groups else [])


def _scatter(ax: plt.Axes, xy: np.ndarray, groups: np.ndarray | None) -> None:
    size = float(np.clip(3000 / max(len(xy), 1), 4, 30))
    if groups is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7, color="tab:blue", label="users")
        return
    colors = _group_colors(_group_order(groups))
    for name in _group_order(groups):
        rows = groups == name
        ax.scatter(xy[rows, 0], xy[rows, 1], s=size, alpha=0.7, color=colors[name], label=_mpl(name))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="group")


def _histogram(ax: plt.Axes, values: np.ndarray, groups: np.ndarray | None) -> None:
    bins = np.linspace(0.0, 1.0, 21)
    if groups is None:
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
        return
    order = _group_order(groups)
    colors = _group_colors(order)
    ax.hist(
        [values[groups == name] for name in order],
        bins=bins,
        stacked=True,
        color=[colors[name] for name in order],
        label=[_mpl(name) for name in order],
    )


def simplex_figure(weights: np.ndarray, groups: np.ndarray | None, title: str) -> plt.Figure:
    """K = 3: each user's weights as a point in the simplex triangle (corners: the prototypes)."""
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.plot(*np.vstack([corners, corners[:1]]).T, color="black", linewidth=1)
    for k, (x, y) in enumerate(corners):
        ax.text(x, y + (0.04 if k == 2 else -0.06), f"prototype {k}", ha="center", fontsize="small")
    ax.plot(*corners.mean(axis=0), marker="+", color="grey", markersize=12, label="uniform weights")
    _scatter(ax, weights @ corners, groups)
    if groups is None:
        ax.legend(fontsize="small", loc="upper right")
    ax.set_xlim(-0.08, 1.08)
    ax.set_ylim(-0.1, corners[2, 1] + 0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(_mpl(title))
    return fig


def pca_figure(weights: np.ndarray, groups: np.ndarray | None, title: str) -> plt.Figure:
    """K > 3: a 2-D PCA projection of the users' weights, with the K simplex vertices and its edges."""
    k = weights.shape[1]
    center = weights.mean(axis=0)
    _, singular, vt = np.linalg.svd(weights - center, full_matrices=False)
    components = np.zeros((2, k))
    components[: min(2, len(vt))] = vt[:2]
    explained = singular[:2] ** 2 / max(float((singular**2).sum()), 1e-300)
    explained = np.pad(explained, (0, 2 - len(explained)))
    users = (weights - center) @ components.T
    vertices = (np.eye(k) - center) @ components.T
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for i in range(k):
        for j in range(i + 1, k):
            ax.plot(*vertices[[i, j]].T, color="lightgrey", linewidth=0.8, zorder=0)
    ax.scatter(*vertices.T, marker="s", color="black", s=30, zorder=3)
    for i, (x, y) in enumerate(vertices):
        ax.annotate(f"p{i}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize="small")
    _scatter(ax, users, groups)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of weight variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%})")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.set_title(_mpl(title))
    return fig


def weight_histograms_figure(weights: np.ndarray, groups: np.ndarray | None, title: str) -> plt.Figure:
    """One histogram per prototype k of the users' weights w_k (stacked by group when groups are known)."""
    k = weights.shape[1]
    ncols = min(k, 4)
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False, sharey=True)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        _histogram(ax, weights[:, i], groups)
        ax.set_xlabel(f"w{i}")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("users")
    if groups is not None:
        axes.flat[0].legend(fontsize="x-small", title="group")
    fig.suptitle(_mpl(title))
    fig.tight_layout()
    return fig


def w0_histogram_figure(weights: np.ndarray, groups: np.ndarray | None, title: str) -> plt.Figure:
    """K = 2: histogram of the weight on prototype 0 (the weight on prototype 1 is 1 - w0)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    _histogram(ax, weights[:, 0], groups)
    if groups is not None:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="group")
    ax.set_xlabel("weight on prototype 0 (w0; w1 = 1 - w0)")
    ax.set_ylabel("users")
    ax.grid(alpha=0.3)
    ax.set_title(_mpl(title))
    return fig


def group_figure(weights: np.ndarray, groups: np.ndarray, title: str) -> plt.Figure:
    """Per group: the share of its users whose dominant prototype is k (bars) and its mean weights (dots)."""
    k = weights.shape[1]
    names = [n for n in _group_order(groups) if n != UNGROUPED][:MAX_GROUP_PANELS]
    colors = _group_colors(_group_order(groups))
    ncols = min(len(names), 4)
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False, sharey=True, sharex=True
    )
    dominant = weights.argmax(axis=1)
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.axis("off")
            continue
        rows = groups == names[i]
        share = np.bincount(dominant[rows], minlength=k) / rows.sum()
        ax.bar(range(k), share, color=colors[names[i]], alpha=0.85, label="dominant prototype")
        ax.plot(range(k), weights[rows].mean(axis=0), "o", color="black", markersize=4, label="mean weight")
        ax.set_title(_mpl(f"{names[i]} ({int(rows.sum())} users)"), fontsize="small")
        ax.set_ylim(0, 1.05)
        ax.set_xticks(range(k))
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[-1, :]:
        ax.set_xlabel("prototype")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of users")
    axes.flat[0].legend(fontsize="x-small")
    fig.suptitle(_mpl(title))
    fig.tight_layout()
    return fig


def training_figure(runs: list[MetricsRun]) -> plt.Figure:
    """Loss and accuracy per epoch (solid: train, dashed: validation), one color per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for i, run in enumerate(runs):
        color = cmap(i % cmap.N)
        epochs = [r["epoch"] for r in run.records]
        marker = "." if len(epochs) <= 30 else None
        for ax, key, style, label in (
            (ax_loss, "train_loss", "-", _mpl(run.label)),
            (ax_loss, "val_loss", "--", None),
            (ax_acc, "train_accuracy", "-", _mpl(run.label)),
            (ax_acc, "val_accuracy", "--", None),
        ):
            values = [r.get(key, math.nan) for r in run.records]
            if not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, style, color=color, marker=marker, label=label)
    ax_loss.set_title("loss (solid: train, dashed: validation)")
    ax_acc.set_title("accuracy (solid: train, dashed: validation)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="run")
    fig.tight_layout()
    return fig


# --- HTML -------------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{str(value).lower()}</td>"
    if isinstance(value, float):
        text = f"{value:.4g}" if value and not 1e-3 <= abs(value) < 1e6 else f"{value:.4f}"
        return f'<td class="num">{html.escape(text)}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    return f"<td>{html.escape(str(value))}</td>"


def html_table(rows: list[dict[str, Any]]) -> str:
    """An HTML table of flat rows; columns are the union of the rows' keys in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _weights_section(ckpt: Checkpoint, user_groups: dict[str, str] | None) -> list[str]:
    weights = ckpt.weights.to_numpy(dtype=np.float64)
    n_users, k = weights.shape
    parts = [f"<h3>{html.escape(ckpt.label)}</h3>"]
    if k < 2:
        return [*parts, '<p class="note">K = 1: every user has weight 1 on the single prototype.</p>']
    if n_users == 0:
        return [*parts, '<p class="note">The checkpoint has no users.</p>']
    groups = None
    if user_groups is not None:
        labels = np.array([user_groups.get(str(u), UNGROUPED) for u in ckpt.weights.index], dtype=object)
        labelled = int((labels != UNGROUPED).sum())
        if labelled:
            groups = labels
            if labelled < n_users:
                parts.append(
                    f'<p class="note">{n_users - labelled} of {n_users} users have no entry in '
                    f"{GROUPS} (shown as {html.escape(UNGROUPED)}).</p>"
                )
        else:
            parts.append(f'<p class="note">None of these users appear in {GROUPS}.</p>')
    name = f"{ckpt.label}: {n_users} users, K = {k}"
    if k == 2:
        parts.append(_png(w0_histogram_figure(weights, groups, name), f"{ckpt.label}: histogram of w0"))
    elif k == 3:
        parts.append(_png(simplex_figure(weights, groups, name), f"{ckpt.label}: users on the simplex"))
    else:
        parts.append(_png(pca_figure(weights, groups, name), f"{ckpt.label}: PCA of user weights"))
        parts.append(
            _png(weight_histograms_figure(weights, groups, name), f"{ckpt.label}: weight histograms")
        )
    if groups is not None:
        n_groups = len(set(groups.tolist()) - {UNGROUPED})
        if n_groups > MAX_GROUP_PANELS:
            parts.append(f'<p class="note">Showing the first {MAX_GROUP_PANELS} of {n_groups} groups.</p>')
        parts.append(
            _png(group_figure(weights, groups, f"{name}: by group"), f"{ckpt.label}: weights by group")
        )
    return parts


def _checkpoint_row(ckpt: Checkpoint) -> dict[str, Any]:
    config = ckpt.config
    history = config.get("history") or {}
    return {
        "run": ckpt.label,
        "model": config.get("model_kind"),
        "estimator": config.get("estimator"),
        "K": int(ckpt.weights.shape[1]),
        "users": len(ckpt.weights),
        "item_dim": config.get("item_dim"),
        "context_dim": config.get("context_dim"),
        "epochs": history.get("epochs"),
        "best_val_accuracy": history.get("best_val_accuracy"),
    }


def _metrics_row(run: MetricsRun) -> dict[str, Any]:
    last = run.records[-1]
    val = [r["val_accuracy"] for r in run.records if not math.isnan(r.get("val_accuracy", math.nan))]
    return {
        "run": run.label,
        "epochs": len(run.records),
        "final_train_loss": last.get("train_loss"),
        "final_train_accuracy": last.get("train_accuracy"),
        "best_val_accuracy": max(val) if val else None,
        "seconds": round(sum(r.get("seconds", 0.0) for r in run.records), 2),
    }


def build_report(run_dir: str | Path) -> str:
    """The report page of a run directory as HTML text."""
    from pluralign.version import __version__

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise PluralignError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise PluralignError(f"{run_dir} is not a directory")
    results_path, groups_path = run_dir / RESULTS, run_dir / GROUPS
    checkpoint_dirs, metrics_files = find_checkpoints(run_dir), find_metrics(run_dir)
    nothing = f"nothing to report in {run_dir}: expected {RESULTS}, {METRICS} or {MODEL}/"
    if not results_path.is_file() and not checkpoint_dirs and not metrics_files:
        raise PluralignError(nothing)

    results = read_results(results_path) if results_path.is_file() else None
    runs = [MetricsRun(label, path, read_metrics(path)) for label, path in metrics_files]
    checkpoints = [load_checkpoint_weights(label, path) for label, path in checkpoint_dirs]
    user_groups = read_user_groups(groups_path) if groups_path.is_file() else None

    missing: list[str] = []
    sections: list[str] = []
    if results is None:
        missing.append(f"<code>{RESULTS}</code> (metrics table, accuracy vs K, few-shot curve)")
    else:
        absent = [key for key in RESULT_KEYS if results.get(key) is None]
        if absent:
            keys = ", ".join(f"<code>{key}</code>" for key in absent)
            missing.append(f"<code>{RESULTS}</code> has no {keys}")
        if results.get("table") is not None:
            table = results["table"]
            sections += ["<h2>Metrics</h2>", html_table(table) if table else '<p class="note">(no rows)</p>']
        if results.get("accuracy_vs_k") is not None:
            fig = accuracy_vs_k_figure(results["accuracy_vs_k"], results_path)
            sections += ["<h2>Accuracy vs number of prototypes K</h2>", _png(fig, "accuracy vs K")]
        if results.get("few_shot") is not None:
            fig = few_shot_figure(results["few_shot"], results_path)
            sections += ["<h2>New users: few-shot accuracy</h2>", _png(fig, "few-shot accuracy")]

    if checkpoints:
        sections.append("<h2>Learned user weights</h2>")
        for ckpt in checkpoints:
            sections += _weights_section(ckpt, user_groups)
        if user_groups is None:
            missing.append(f"<code>{GROUPS}</code> (weights by user group)")
    else:
        missing.append(f"<code>{MODEL}/</code> checkpoints (learned user weights)")

    nonempty = [run for run in runs if run.records]
    if nonempty:
        sections += [
            "<h2>Training curves</h2>",
            html_table([_metrics_row(run) for run in nonempty]),
            _png(training_figure(nonempty), "training loss and accuracy per epoch"),
        ]
    for run in runs:
        if not run.records:
            missing.append(f"epochs in <code>{html.escape(str(run.path))}</code> (the file is empty)")
    if not runs:
        missing.append(f"<code>{METRICS}</code> (training curves)")

    if not sections:
        raise PluralignError(f"{nothing} ({RESULTS} has none of {', '.join(RESULT_KEYS)})")

    name = _label(run_dir)
    meta = [
        ("run directory", str(run_dir.resolve())),
        ("generated", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("pluralign", __version__),
    ]
    header = [
        f"<h1>pluralign report: {html.escape(name)}</h1>",
        "<table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in meta)
        + "</table>",
    ]
    if checkpoints:
        header += ["<h2>Checkpoints</h2>", html_table([_checkpoint_row(c) for c in checkpoints])]
    if missing:
        header.append('<p class="note">Not found: ' + "; ".join(missing) + ".</p>")
    body = "\n".join(header + sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>pluralign report: {html.escape(name)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report page to ``out`` (default RUN_DIR/report.html) atomically; returns its path."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    if out.is_dir():
        raise PluralignError(f"--out {out} is a directory; give a file name such as {out / 'report.html'}")
    text = build_report(run_dir)
    return atomic_write_text(out, text)
