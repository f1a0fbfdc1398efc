"""scikit-learn style estimators: ``PALB(n_prototypes=4).fit(train, val)``, then reward, score, adapt, save.

- ``base``: what every estimator shares (data boundary, fit, prediction, new users, persistence)
- ``params``: the hyperparameters, defined once (``__init__`` signatures and CLI options derive from it)
- ``tiny``: PALA, PALB, BTL over frozen, cached embeddings
- ``large``: PALALarge, PALBLarge, with the text encoder fine-tuned
"""

from pluralign.estimator.base import ESTIMATORS, DataLike, PALEstimator
from pluralign.estimator.large import PALALarge, PALBLarge
from pluralign.estimator.tiny import BTL, PALA, PALB

__all__ = ["BTL", "ESTIMATORS", "PALA", "PALB", "DataLike", "PALALarge", "PALBLarge", "PALEstimator"]
