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

What the prototypes stand for (:mod:`pluralign.report.explain`, docs/explain.md): for a checkpoint whose data
is known, the prompts (or responses) each prototype favours most and least relative to the others, the users
by dominant prototype and, with group labels, the adjusted Rand index against the groups. The data is
``data`` when given, else the training file named in the run's ``train.json`` (``pluralign train --out``)
if it still exists; group labels come from ``users`` (a users CSV), else the data's ``<stem>.users.csv``
(``pluralign datasets polis``) when it has ``group_column``, else ``user_groups.json``.

This module assembles the page; the inputs are read by :mod:`pluralign.report.inputs`, the figures drawn by
:mod:`pluralign.report.figures` and the HTML pieces built by :mod:`pluralign.report.sections`.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pluralign.atomic import atomic_write_text
from pluralign.errors import DataError, PluralignError
from pluralign.report.figures import (
    MAX_GROUP_PANELS,
    UNGROUPED,
    accuracy_vs_k_figure,
    few_shot_figure,
    group_figure,
    pca_figure,
    png_img,
    simplex_figure,
    training_figure,
    w0_histogram_figure,
    weight_histograms_figure,
)
from pluralign.report.inputs import (
    GROUPS,
    METRICS,
    MODEL,
    RESULT_KEYS,
    RESULTS,
    Checkpoint,
    Curves,
    MetricsRun,
    find_checkpoints,
    find_metrics,
    label_of,
    load_checkpoint_weights,
    read_metrics,
    read_results,
    read_user_groups,
    training_data,
)
from pluralign.report.sections import (
    checkpoint_row,
    explain_section,
    html_table,
    metrics_row,
    weights_section,
)

# Every public name this module had before it was split into modules, so that importers keep working.
__all__ = [
    "GROUPS",
    "MAX_GROUP_PANELS",
    "METRICS",
    "MODEL",
    "RESULTS",
    "RESULT_KEYS",
    "STYLE",
    "UNGROUPED",
    "Checkpoint",
    "Curves",
    "MetricsRun",
    "accuracy_vs_k_figure",
    "build_report",
    "few_shot_figure",
    "find_checkpoints",
    "find_metrics",
    "group_figure",
    "html_table",
    "load_checkpoint_weights",
    "pca_figure",
    "read_metrics",
    "read_results",
    "read_user_groups",
    "simplex_figure",
    "training_figure",
    "w0_histogram_figure",
    "weight_histograms_figure",
    "write_report",
]

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


def _explain_sections(
    checkpoints: list[Checkpoint],
    data: Path | None,
    users: Path | None,
    group_column: str,
    user_groups: dict[str, str] | None,
    missing: list[str],
) -> list[str]:
    """The "what the prototypes stand for" section of every checkpoint whose data is known. Data or users
    given explicitly must work; a training file found through train.json that cannot be read is listed
    as missing instead."""
    from pluralign.report.explain import default_users_file, explain, read_groups

    parts: list[str] = []
    for ckpt in checkpoints:
        source = data if data is not None else training_data(ckpt.path)
        if source is None:
            continue
        labels: Any = users
        if labels is None and (found := default_users_file(source)) is not None:
            try:
                read_groups(found, group_column)  # usable? (else: the next source of labels)
                labels = found
            except DataError:
                pass
        if labels is None:
            labels = user_groups
        try:
            result = explain(ckpt.estimator, source, labels, group_column=group_column)
        except PluralignError as exc:
            if data is not None or users is not None:
                raise
            missing.append(f"the prototypes of {html.escape(ckpt.label)} ({html.escape(str(exc))})")
            continue
        parts += explain_section(ckpt.label, result)
    return ["<h2>What the prototypes stand for</h2>", *parts] if parts else []


def build_report(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    users: str | Path | None = None,
    group_column: str = "group_id",
) -> str:
    """The report page of a run directory as HTML text (``data``, ``users``: see the module docstring)."""
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
            sections += ["<h2>Accuracy vs number of prototypes K</h2>", png_img(fig, "accuracy vs K")]
        if results.get("few_shot") is not None:
            fig = few_shot_figure(results["few_shot"], results_path)
            sections += ["<h2>New users: few-shot accuracy</h2>", png_img(fig, "few-shot accuracy")]

    if checkpoints:
        sections.append("<h2>Learned user weights</h2>")
        for ckpt in checkpoints:
            sections += weights_section(ckpt, user_groups)
        if user_groups is None:
            missing.append(f"<code>{GROUPS}</code> (weights by user group)")
    else:
        missing.append(f"<code>{MODEL}/</code> checkpoints (learned user weights)")
    sections += _explain_sections(
        checkpoints,
        None if data is None else Path(data),
        None if users is None else Path(users),
        group_column,
        user_groups,
        missing,
    )

    nonempty = [run for run in runs if run.records]
    if nonempty:
        sections += [
            "<h2>Training curves</h2>",
            html_table([metrics_row(run) for run in nonempty]),
            png_img(training_figure(nonempty), "training loss and accuracy per epoch"),
        ]
    for run in runs:
        if not run.records:
            missing.append(f"epochs in <code>{html.escape(str(run.path))}</code> (the file is empty)")
    if not runs:
        missing.append(f"<code>{METRICS}</code> (training curves)")

    if not sections:
        raise PluralignError(f"{nothing} ({RESULTS} has none of {', '.join(RESULT_KEYS)})")

    name = label_of(run_dir)
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
        header += ["<h2>Checkpoints</h2>", html_table([checkpoint_row(c) for c in checkpoints])]
    if missing:
        header.append('<p class="note">Not found: ' + "; ".join(missing) + ".</p>")
    body = "\n".join(header + sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>pluralign report: {html.escape(name)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
    users: str | Path | None = None,
    group_column: str = "group_id",
) -> Path:
    """Write the report page to ``out`` (default RUN_DIR/report.html) atomically; returns its path."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    if out.is_dir():
        raise PluralignError(f"--out {out} is a directory; give a file name such as {out / 'report.html'}")
    text = build_report(run_dir, data=data, users=users, group_column=group_column)
    return atomic_write_text(out, text)
