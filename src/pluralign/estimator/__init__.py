"""scikit-learn style estimators: ``PALB(n_prototypes=4).fit(train, val)``, then reward, score, adapt, save.

- ``base``: what every estimator shares (data boundary, fit, prediction, new users, persistence)
- ``params``: the hyperparameters, defined once (``__init__`` signatures and CLI options derive from it)
- ``tiny``: PALA, PALB, BTL over frozen, cached embeddings
- ``large``: PALALarge, PALBLarge, with the text encoder fine-tuned
- ``peers``: LoRe, MatrixFactorization, PerUser (peer methods, same API, frozen embeddings; docs/peers.md)
- ``onboarding``, ``growth``: next questions for new users, growing prototypes

The classes load on first use (``pluralign.estimator.PALB``), so ``pluralign.estimator.params`` (all the
CLI needs for its options) imports without torch. Loading any class loads them all, so every estimator is
registered in ``ESTIMATORS`` before a checkpoint is looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "BTL",
    "ESTIMATORS",
    "PALA",
    "PALB",
    "DataLike",
    "LoRe",
    "MatrixFactorization",
    "PALALarge",
    "PALBLarge",
    "PALEstimator",
    "PerUser",
]

if TYPE_CHECKING:
    from pluralign.estimator.base import ESTIMATORS, DataLike, PALEstimator
    from pluralign.estimator.large import PALALarge, PALBLarge
    from pluralign.estimator.peers import LoRe, MatrixFactorization, PerUser
    from pluralign.estimator.tiny import BTL, PALA, PALB


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'pluralign.estimator' has no attribute {name!r}")
    from pluralign.estimator import base, large, peers, tiny

    for module in (base, tiny, large, peers):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(name)  # pragma: no cover - every name of __all__ is defined above
