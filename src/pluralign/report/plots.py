"""Figures as PNG files (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pluralign.atomic import atomic_write
from pluralign.extras import require

matplotlib = require("report", "matplotlib")  # a missing extra is one line naming the pip command
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write a figure atomically (temp file, then rename) and close it."""
    path = Path(path)
    try:
        return atomic_write(
            path,
            lambda handle: fig.savefig(handle, dpi=120, bbox_inches="tight", format=path.suffix[1:] or "png"),
        )
    finally:
        plt.close(fig)


def accuracy_vs_k_axes(
    ax: plt.Axes,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    true_k: int | None = None,
    title: str = "",
) -> None:
    """One line per label: (K values, mean accuracy, std) with error bars; a dashed line at K*."""
    for label, (ks, mean, std) in curves.items():
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=label)
    if true_k is not None:
        ax.axvline(true_k, color="grey", linestyle="--", linewidth=1, label=f"K* = {true_k}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of prototypes K")
    ax.set_ylabel("seen-user test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def few_shot_axes(
    ax: plt.Axes,
    shots: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    reference: float | None = None,
    reference_label: str = "seen users",
    title: str = "",
) -> None:
    """Accuracy of unseen users against the number of their comparisons used to fit their weights."""
    few_shot_curves_axes(
        ax,
        {"unseen users (few-shot)": (shots, mean, std)},
        reference=reference,
        reference_label=reference_label,
        title=title,
    )


def few_shot_curves_axes(
    ax: plt.Axes,
    curves: Mapping[str, tuple[Sequence[int], Sequence[float], Sequence[float]]],
    *,
    reference: float | None = None,
    reference_label: str = "seen users",
    title: str = "",
) -> None:
    """One few-shot curve per label: (shots, mean accuracy, std) with error bars; a dashed reference line."""
    for label, (shots, mean, std) in curves.items():
        ax.errorbar(shots, mean, yerr=std, marker="o", capsize=3, label=label)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label=reference_label)
    ax.set_xscale("symlog", linthresh=10)
    shown = sorted({float(x) for shots, _, _ in curves.values() for x in shots if x == x})
    # 1-2-5 ticks up to 500, decades beyond: labels stay apart on the log part of the axis
    top = max(shown, default=0)
    steps = (0, 5, 10, 20, 50, 100, 200, 500) if top <= 500 else (0, 10, 100, 1000, 10000, 100000)
    ticks = [t for t in steps if t <= top]
    ax.set_xticks(ticks, labels=[f"{x:g}" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel("comparisons of the new user (0 = zero-shot)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
