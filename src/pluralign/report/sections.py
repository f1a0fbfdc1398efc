"""The HTML pieces of the report page: tables, the sections on each checkpoint's user weights and on what its
prototypes stand for, summary rows."""

from __future__ import annotations

import html
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from pluralign.report.figures import (
    MAX_GROUP_PANELS,
    UNGROUPED,
    group_figure,
    pca_figure,
    png_img,
    simplex_figure,
    w0_histogram_figure,
    weight_histograms_figure,
)
from pluralign.report.inputs import GROUPS, Checkpoint, MetricsRun

if TYPE_CHECKING:
    from pluralign.report.explain import Explanation


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


def weights_section(ckpt: Checkpoint, user_groups: dict[str, str] | None) -> list[str]:
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
        parts.append(png_img(w0_histogram_figure(weights, groups, name), f"{ckpt.label}: histogram of w0"))
    elif k == 3:
        parts.append(png_img(simplex_figure(weights, groups, name), f"{ckpt.label}: users on the simplex"))
    else:
        parts.append(png_img(pca_figure(weights, groups, name), f"{ckpt.label}: PCA of user weights"))
        parts.append(
            png_img(weight_histograms_figure(weights, groups, name), f"{ckpt.label}: weight histograms")
        )
    if groups is not None:
        n_groups = len(set(groups.tolist()) - {UNGROUPED})
        if n_groups > MAX_GROUP_PANELS:
            parts.append(f'<p class="note">Showing the first {MAX_GROUP_PANELS} of {n_groups} groups.</p>')
        parts.append(
            png_img(group_figure(weights, groups, f"{name}: by group"), f"{ckpt.label}: weights by group")
        )
    return parts


def explain_section(label: str, result: Explanation) -> list[str]:
    """What each prototype favours most and least relative to the others (texts whole), the users by
    dominant prototype and, with group labels, the contingency table and its adjusted Rand index."""
    units = "prompts" if result.unit == "prompt" else "prompt-response pairs"
    chose = f"chose {result.positive}" if result.positive else "chose the positive response"
    if result.unit == "response":
        chose = "chose this response"
    parts = [
        f"<h3>{html.escape(label)}</h3>",
        f"<p>{result.n_units:,} {units} in {result.n_rows:,} rows of <code>{html.escape(str(result.source))}"
        f"</code>. <code>{html.escape(result.definition)}</code>. share: of the unit's rows, those that "
        f"{html.escape(chose)}; rows_k, share_k: the same over users whose dominant prototype is k.</p>",
    ]
    for proto in result.prototypes:
        for which, verb in (("favours", "favours most"), ("disfavours", "favours least")):
            parts += [
                f"<h4>prototype {proto.prototype} {verb}</h4>",
                html_table(result.unit_rows(proto.prototype, which, width=0)),
            ]
    parts += ["<h4>users by dominant prototype</h4>", html_table(result.user_rows())]
    users = result.users
    if users["n_users"]:
        parts.append(
            f'<p class="note">{users["n_users"]:,} users: mean weight entropy {users["entropy"]:.3f} of '
            f"log K, prototypes a user mixes {users['user_effective_k']:.2f} (mean exp entropy), "
            f"prototypes the population uses {users['effective_k']:.2f}.</p>"
        )
    groups = result.groups
    if groups is not None:
        source = (
            f"column <code>{html.escape(str(groups['column']))}</code> of "
            f"<code>{html.escape(groups['source'])}</code>"
            if groups["source"]
            else f"<code>{GROUPS}</code>"
        )
        ari = "n/a" if groups["ari"] is None else f"{groups['ari']:.3f}"
        parts += [
            "<h4>groups by dominant prototype</h4>",
            f"<p>Adjusted Rand index of dominant prototype vs group ({source}): <b>{ari}</b> "
            f"({groups['n_labelled']:,} users with a label, {groups['n_unlabelled']:,} without).</p>",
            html_table(result.contingency_rows()),
        ]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in result.notes]
    return parts


def checkpoint_row(ckpt: Checkpoint) -> dict[str, Any]:
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


def metrics_row(run: MetricsRun) -> dict[str, Any]:
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
