"""The figures of the report page, and their embedding in it as PNG data URIs.

Accuracy against K and few-shot curves from ``results.json``, the learned user weights (a histogram of w0
for K = 2, the simplex for K = 3, a PCA projection and per-prototype histograms for K > 3, and a panel per
user group), and training curves. Labels are shown literally (no mathtext).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.report.inputs import MetricsRun, read_curves
from pluralign.report.plots import accuracy_vs_k_axes, few_shot_curves_axes, plt

UNGROUPED = "(no group)"
MAX_GROUP_PANELS = 24


def _mpl(text: str) -> str:
    """Text shown literally by matplotlib: no mathtext, and no legend-hiding leading underscore."""
    text = text.replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def png_img(fig: plt.Figure, alt: str) -> str:
    """An <img> tag holding the figure as a base64 PNG data URI; closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def accuracy_vs_k_figure(spec: dict[str, Any], path: Path) -> plt.Figure:
    """Accuracy against K, one line per series, from results.json's ``accuracy_vs_k``."""
    curves = read_curves(spec, path, "accuracy_vs_k", "k")
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
    curves = read_curves(spec, path, "few_shot", "shots")
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
