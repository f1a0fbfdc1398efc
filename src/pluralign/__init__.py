"""pluralign: learn from preference data where different people want different things."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pluralign.version import __version__

__all__ = ["BTL", "PALA", "PALB", "PALEstimator", "PreferenceData", "__version__", "read_preferences"]

if TYPE_CHECKING:
    from pluralign.data import PreferenceData, read_preferences
    from pluralign.estimator import BTL, PALA, PALB, PALEstimator


def __getattr__(name: str) -> Any:
    # Lazy, so `pluralign --help` does not pay for importing torch.
    if name in {"BTL", "PALA", "PALB", "PALEstimator"}:
        from pluralign import estimator

        return getattr(estimator, name)
    if name in {"PreferenceData", "read_preferences"}:
        from pluralign import data

        return getattr(data, name)
    raise AttributeError(f"module 'pluralign' has no attribute {name!r}")
