"""Growing prototypes: new users whom the learned prototypes cannot explain get prototypes of their own.

PAL's mixture model only reaches users inside the convex hull of its K prototypes (paper, Sec. 5). Growing
keeps the trained model and adds M prototypes for the users outside, without retraining from scratch:

1. **Detect.** Every new user's held-out accuracy under the current prototypes is measured by F-fold
   cross-validation within their own answers (weights fitted few-shot on F - 1 folds, the other fold
   scored). The same protocol on seen users' comparisons (``reference``) gives the population: pooled
   accuracy p (Laplace-smoothed) and the between-user variance tau^2 beyond binomial noise. A new user u
   with n_u scored answers and accuracy a_u is *poorly explained* when both

       z_u = (a_u - p) / sqrt(p (1 - p) / n_u + tau^2) <= -z       (default z = 3)
       p - a_u >= min_gap                                          (default 0.05)

   hold, and they have at least ``min_answers`` answers (fewer are not assessed).
2. **Grow.** M new prototypes (PAL-B: new preference maps g_k; PAL-A: new prototype points) are trained on
   the flagged users' answers only, jointly with those users' weights over all K + M prototypes; every
   existing parameter is frozen. Existing users get weight exactly 0 on the new prototypes and the grown
   model computes by prototype block (pluralign.models.grown), so their predictions are bit-for-bit those
   of the model before. The flagged users' answers are split 90/10: the 10% choose the best epoch and
   measure accuracy before and after growing. Other new users are added with few-shot weights (over all
   K + M prototypes).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pluralign.errors import DataError, PluralignError
from pluralign.models.base import PreferenceModel
from pluralign.models.grown import make_blockwise
from pluralign.models.mlp import MLP
from pluralign.models.pal_a import PALAModel
from pluralign.models.pal_b import PALBModel
from pluralign.training.adaptation import MIN_LOG_WEIGHT

logger = logging.getLogger(__name__)


class NothingToGrow(PluralignError):
    """No new user is poorly explained by the current prototypes."""


@dataclass(frozen=True)
class DetectionRule:
    """Who is poorly explained: z-score and accuracy gap against the population (see the module doc)."""

    z: float = 3.0
    min_gap: float = 0.05
    folds: int = 5
    min_answers: int = 10

    def __post_init__(self) -> None:
        if not self.z > 0:
            raise ValueError(f"z must be > 0, got {self.z}")
        if not 0 <= self.min_gap < 1:
            raise ValueError(f"min_gap must be in [0, 1), got {self.min_gap}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.min_answers < self.folds:
            raise ValueError(f"min_answers must be >= folds ({self.folds}), got {self.min_answers}")

    def describe(self) -> str:
        return (
            f"{self.folds}-fold held-out accuracy with z <= -{self.z:g} and a gap >= {self.min_gap:g} "
            f"below the seen users' (users with >= {self.min_answers} answers)"
        )


@dataclass
class GrowReport:
    """What ``grow`` did. Accuracies of the flagged users are on their held-out answers (10%)."""

    n_prototypes_before: int
    n_prototypes_after: int
    rule: str
    detection: pd.DataFrame
    population: dict[str, float] | None
    flagged: list[str]
    heldout_before: float
    heldout_after: float
    n_heldout: int
    others_heldout_before: float
    others_heldout_after: float
    n_others_heldout: int
    reference_check: dict[str, Any] | None
    #: optimizer steps of the grow phase, and the one whose weights were kept (None: no held-out rows)
    steps: int
    best_step: int | None
    detect_seconds: float
    grow_seconds: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """Before/after rows: flagged new users, other new users, seen users (with a reference)."""
        n_users = len(self.detection)
        rows = [
            {
                "group": "flagged new users",
                "users": len(self.flagged),
                "comparisons": self.n_heldout,
                "before": self.heldout_before,
                "after": self.heldout_after,
                "measured on": "their held-out 10%",
            },
            {
                "group": "other new users",
                "users": n_users - len(self.flagged),
                "comparisons": self.n_others_heldout,
                "before": self.others_heldout_before,
                "after": self.others_heldout_after,
                "measured on": "their held-out 10%",
            },
        ]
        if self.reference_check is not None:
            ref = self.reference_check
            rows.append(
                {
                    "group": "seen users (reference)",
                    "users": ref["users"],
                    "comparisons": ref["comparisons"],
                    "before": ref["accuracy_before"],
                    "after": ref["accuracy_after"],
                    "measured on": f"reference rows; margins identical: {ref['margins_identical']}",
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "detection"}
        out["detection"] = self.detection.reset_index().to_dict(orient="records")
        return out


def population_stats(reference: pd.DataFrame, min_answers: int) -> dict[str, float]:
    """Pooled accuracy p (Laplace-smoothed) and between-user variance tau^2 of seen users' CV accuracy."""
    ref = reference[reference["n_comparisons"] >= min_answers]
    if len(ref) == 0:
        raise DataError(f"reference: no seen user has >= {min_answers} comparisons to compare against")
    p = (ref["correct"].sum() + 1.0) / (ref["scored"].sum() + 2.0)
    binomial = p * (1 - p) / ref["scored"]
    tau2 = max(0.0, float(ref["accuracy"].var(ddof=1)) - float(binomial.mean())) if len(ref) > 1 else 0.0
    return {
        "users": len(ref),
        "comparisons": int(ref["scored"].sum()),
        "accuracy": float(p),
        "mean_user_accuracy": float(ref["accuracy"].mean()),
        "tau": math.sqrt(tau2),
    }


def flag_users(cv: pd.DataFrame, population: dict[str, float], rule: DetectionRule) -> pd.DataFrame:
    """``cv`` with columns z, gap, assessed and flagged by ``rule`` against ``population``."""
    p, tau = population["accuracy"], population["tau"]
    out = cv.copy()
    sd = np.sqrt(p * (1 - p) / np.maximum(out["scored"], 1) + tau**2)
    out["gap"] = p - out["accuracy"]
    out["z"] = -out["gap"] / sd
    out["assessed"] = out["n_comparisons"] >= rule.min_answers
    out["flagged"] = out["assessed"] & (out["z"] <= -rule.z) & (out["gap"] >= rule.min_gap)
    return out


# ========================================================================================================
# growing
# ========================================================================================================
def _fresh_like(module: MLP, generator: torch.Generator) -> MLP:
    """A new map of ``module``'s architecture, initialised from ``generator``."""
    return MLP(module.in_dim, module.out_dim, module.config, generator)


def add_prototypes(model: PreferenceModel, n_new: int, *, seed: int = 0) -> PreferenceModel:
    """A copy of ``model`` with ``n_new`` freshly initialized prototypes in a new block.

    Existing users' logits on the new prototypes are ``MIN_LOG_WEIGHT``, so their weight there is exactly 0.
    """
    if not isinstance(model, PALAModel | PALBModel):
        raise PluralignError(f"only PAL-A and PAL-B models have prototypes to grow, not a {model.kind} model")
    blocks = tuple(getattr(model, "prototype_blocks", (model.n_prototypes,)))
    grown = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(grown, PALBModel):
        for _ in range(n_new):
            grown.g.append(_fresh_like(grown.g[0], generator))
    else:
        joint_dim = grown.prototypes.shape[1]
        new = torch.randn(n_new, joint_dim, generator=generator, dtype=grown.prototypes.dtype)
        new /= joint_dim**0.5
        grown.prototypes = nn.Parameter(torch.cat([grown.prototypes.detach(), new]))
    pad = torch.full((grown.n_users, n_new), MIN_LOG_WEIGHT, dtype=grown.user_logits.dtype)
    grown.user_logits = nn.Parameter(torch.cat([grown.user_logits.detach(), pad], dim=1))
    grown.n_prototypes += n_new
    return make_blockwise(grown, (*blocks, n_new))


def frozen_names(model: PreferenceModel, n_old: int) -> list[str]:
    """Parameters that growing must not change: everything but the new prototypes and the user table."""
    if isinstance(model, PALBModel):
        new = {f"g.{k}." for k in range(n_old, model.n_prototypes)}
        return [
            n
            for n, _ in model.named_parameters()
            if n != "user_logits" and not any(n.startswith(p) for p in new)
        ]
    return [n for n, _ in model.named_parameters() if n not in ("user_logits", "prototypes")]


def accuracy_of(margin: torch.Tensor) -> float:
    if len(margin) == 0:
        return float("nan")
    return float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean())
