"""TRL trainers for the DPO family: swap ``DPOTrainer`` for one of these and keep everything else.

- :class:`PluralDPOTrainer`: TRL's DPO (sigmoid loss) with optional per-example weights (a
  ``sample_weight`` column, used by EM-DPO's M-step) and reference log-probs carried in the dataset.
- :class:`MixDPOTrainer` + :class:`MixDPOConfig`: MixDPO, where beta is a learned distribution
  (LogNormal by Monte Carlo, Gamma in closed form) trained jointly with the policy; its mean and spread are
  logged every step and saved next to the model (``beta_distribution.json``).

Both compute the policy margin
delta = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))
on TRL's own tokenization and collator (same completion mask; reference log-probs from the dataset, TRL's
precompute, the reference model or the disabled adapter) and change only the per-pair loss, so accelerate,
PEFT, gradient accumulation, logging and checkpointing all come from TRL and transformers unchanged.

Only public extension points are used: ``compute_loss``, ``log``, ``prediction_step``, ``create_optimizer``,
``save_model`` and ``train`` (MixDPO's beta on resume), the ``data_collator`` attribute, TRL's public
``compute_ref_log_probs``, and config fields set before ``DPOTrainer.__init__`` (``remove_unused_columns``
when weights ride along, ``precompute_ref_log_probs`` off when the dataset already carries reference
log-probs). The supported TRL versions are checked once (:mod:`pluralign.dpo.compat`).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pluralign.dpo.compat import check_versions

check_versions()

from trl import DPOConfig, DPOTrainer  # noqa: E402  (after the version check: one clear line, not a traceback)

from pluralign.atomic import atomic_write_json  # noqa: E402
from pluralign.dpo.logps import sequence_logps  # noqa: E402
from pluralign.dpo.losses import PARAM_NAMES, BetaDistribution  # noqa: E402

__all__ = ["WEIGHT_COLUMN", "MixDPOConfig", "MixDPOTrainer", "PluralDPOTrainer"]

log = logging.getLogger(__name__)

WEIGHT_COLUMN = "sample_weight"
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
BETA_FILE = "beta_distribution.json"
_SIGNATURE = inspect.signature(DPOTrainer.__init__)


def _check_supported(args: DPOConfig) -> None:
    """Our trainers replace the loss, so TRL options that change the loss or the margin must stay off."""
    if list(args.loss_type) != ["sigmoid"]:
        raise ValueError(f"loss_type must be ['sigmoid'] (the loss replaced here), got {args.loss_type}")
    if args.f_divergence_type != "reverse_kl":
        raise ValueError(f"f_divergence_type must be 'reverse_kl', got {args.f_divergence_type!r}")
    for name in ("ld_alpha", "use_liger_kernel", "padding_free", "use_weighting"):
        if getattr(args, name, None):
            raise ValueError(f"{name} is not supported by pluralign's DPO trainers")
    if args.label_smoothing:
        raise ValueError("label_smoothing is not supported by pluralign's DPO trainers")


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class _WeightedCollator:
    """TRL's preference collator plus the per-example ``sample_weight`` (float32) when the rows carry one."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.base(examples)
        if WEIGHT_COLUMN in examples[0]:
            weights = [float(e[WEIGHT_COLUMN]) for e in examples]
            batch[WEIGHT_COLUMN] = torch.tensor(weights, dtype=torch.float32)
        return batch


class PluralDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` with per-example weights; a drop-in replacement (same arguments).

    A ``sample_weight`` column (>= 0) weights each pair's loss: the batch loss is
    sum_i w_i l_i / (batch size * mean weight over the training set), so the weights change the relative
    importance of examples but not the overall step size (the column reaches the collator because
    ``remove_unused_columns`` is turned off for such a dataset). A dataset may carry reference log-probs
    (``ref_chosen_logps``, ``ref_rejected_logps``, e.g. from :func:`pluralign.dpo.data.pairs_dataset`): they
    are used as is and TRL's own precompute is skipped; then pass the reference model as ``ref_model`` (it is
    not run) or train a PEFT model, so TRL does not load a second copy. Other columns (``user_id``, ...) ride
    along and are ignored by the loss.
    """

    # transformers: the loss returned by compute_loss is a per-batch mean, so it divides by the accumulation
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = _SIGNATURE.bind(None, *args, **kwargs)
        params = bound.arguments
        config = params.get("args")
        if config is None:
            raise TypeError(f"{type(self).__name__} needs args=DPOConfig(...)")
        _check_supported(config)
        dataset = params.get("train_dataset")
        columns = set(getattr(dataset, "column_names", None) or [])
        self._weight_scale = 1.0
        if WEIGHT_COLUMN in columns:
            weights = torch.as_tensor(dataset[WEIGHT_COLUMN], dtype=torch.float64)
            if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
                raise ValueError(f"'{WEIGHT_COLUMN}' must be finite and >= 0")
            mean = float(weights.mean())
            if mean <= 0:
                raise ValueError(f"'{WEIGHT_COLUMN}' is 0 for every example: nothing to train on")
            self._weight_scale = 1.0 / mean
            if config.remove_unused_columns:
                config = replace(config, remove_unused_columns=False)
        if set(REF_COLUMNS) <= columns:
            no_reference = params.get("ref_model") is None and params.get("peft_config") is None
            if no_reference and not _is_peft(params["model"]):
                raise ValueError(
                    "the dataset carries reference log-probs (ref_chosen_logps / ref_rejected_logps): pass "
                    "the reference model as ref_model (it is not run), or drop the columns for TRL to compute"
                )
            if config.precompute_ref_log_probs:
                config = replace(config, precompute_ref_log_probs=False)
        params["args"] = config
        super().__init__(*bound.args[1:], **bound.kwargs)
        self.data_collator = _WeightedCollator(self.data_collator)
        self.batch_metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    # --- the loss -------------------------------------------------------------------------------------
    def policy_margin(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(delta, policy log-prob ratios [2, B]) for a collated batch (chosen rows first, then rejected)."""
        ids, attention, completion = (inputs[k] for k in ("input_ids", "attention_mask", "completion_mask"))
        logps = sequence_logps(model, ids, attention, completion)
        chosen, rejected = logps.chunk(2, dim=0)
        if all(c in inputs for c in REF_COLUMNS):
            ref_chosen = inputs["ref_chosen_logps"].to(logps.dtype)
            ref_rejected = inputs["ref_rejected_logps"].to(logps.dtype)
        else:
            reference = self.ref_model if self.ref_model is not None else self.model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(reference, inputs)
        ratios = torch.stack([chosen - ref_chosen, rejected - ref_rejected])
        return ratios[0] - ratios[1], ratios

    def pair_loss(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-pair loss from the margin; DPO: -log sigmoid(beta * delta)."""
        return F.softplus(-self.beta * delta)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        delta, ratios = self.policy_margin(model, inputs)
        per_pair = self.pair_loss(delta)
        if WEIGHT_COLUMN in inputs:
            weights = inputs[WEIGHT_COLUMN].to(per_pair.dtype)
            loss = (weights * per_pair).mean() * self._weight_scale
        else:
            loss = per_pair.mean()
        self._log_batch(delta.detach(), ratios.detach(), inputs.get(WEIGHT_COLUMN))
        return (loss, {"delta": delta}) if return_outputs else loss

    def _log_batch(self, delta: torch.Tensor, ratios: torch.Tensor, weights: torch.Tensor | None) -> None:
        metrics = self.batch_metrics["train" if self.model.training else "eval"]
        if weights is None:
            weights = torch.ones_like(delta)
        # gather_for_metrics drops the duplicated samples of the last, uneven batch along dim 0, so gather one
        # value per pair ([B] tensors): a [2, B] tensor would be cut to its first row
        gather = self.accelerator.gather_for_metrics
        gathered, weights = gather(delta), gather(weights.to(delta.dtype))
        chosen, rejected = gather(ratios[0].contiguous()), gather(ratios[1].contiguous())
        # weighted by the examples' weights: for an EM-DPO M-step, the accuracy on the type's own users
        correct = ((gathered > 0).to(delta.dtype) * weights).sum() / weights.sum().clamp_min(1e-12)
        metrics["rewards/accuracies"].append(correct.item())
        metrics["rewards/margins"].append(self.beta * gathered.mean().item())
        metrics["rewards/chosen"].append(self.beta * chosen.mean().item())
        metrics["rewards/rejected"].append(self.beta * rejected.mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the means of the batch metrics since the last log (``eval_`` prefixed in evaluation)."""
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        pending = self.batch_metrics[mode]
        logs.update({f"{prefix}{k}": sum(v) / len(v) for k, v in pending.items() if v})
        pending.clear()
        super().log(logs, start_time)

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[torch.Tensor, None, None]:
        device = self.accelerator.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


@dataclass
class MixDPOConfig(DPOConfig):
    """``DPOConfig`` plus the learned beta distribution; ``beta`` is the initial mean of beta."""

    beta_distribution: str = field(
        default="lognormal", metadata={"help": "Family of the beta distribution: 'lognormal' or 'gamma'."}
    )
    beta_spread: float = field(
        default=0.5, metadata={"help": "Initial coefficient of variation (std / mean) of beta."}
    )
    beta_samples: int = field(
        default=16, metadata={"help": "Monte Carlo samples per pair (LogNormal only; Gamma is exact)."}
    )
    beta_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the distribution's (log-scale) parameters (default: 1e-2)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta_distribution not in PARAM_NAMES:
            raise ValueError(
                f"beta_distribution must be one of {', '.join(PARAM_NAMES)}, got {self.beta_distribution!r}"
            )
        if not self.beta_spread > 0:
            raise ValueError(f"beta_spread must be > 0, got {self.beta_spread}")
        if self.beta_samples < 1:
            raise ValueError(f"beta_samples must be >= 1, got {self.beta_samples}")
        if self.beta_learning_rate is not None and not self.beta_learning_rate > 0:
            raise ValueError(f"beta_learning_rate must be > 0, got {self.beta_learning_rate}")


class MixDPOTrainer(PluralDPOTrainer):
    """MixDPO: -log E_beta[sigmoid(beta * delta)] with beta ~ p_phi learned jointly with the policy.

    ``trainer.beta_distribution`` holds phi; ``trainer.beta_stats()`` gives the mean, std and cv of beta
    (logged every step as ``beta/mean``, ``beta/std``, ``beta/cv``). A cv that shrinks during training says
    the data look homogeneous; one that grows says annotators disagree. The distribution is saved as
    ``beta_distribution.json`` next to the model and restored when resuming from a checkpoint.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args") if "args" in kwargs else (args[2] if len(args) > 2 else None)
        if not isinstance(config, MixDPOConfig):
            raise TypeError("MixDPOTrainer needs args=MixDPOConfig(...)")
        super().__init__(*args, **kwargs)
        self.beta_distribution = BetaDistribution(
            config.beta_distribution,
            mean=config.beta,
            spread=config.beta_spread,
            n_samples=config.beta_samples,
        ).to(self.accelerator.device)
        device = self.accelerator.device
        self._beta_generator = torch.Generator(device=device).manual_seed(config.seed)

    def beta_stats(self) -> dict[str, float]:
        """Mean, std and cv (std / mean) of the current beta distribution."""
        return self.beta_distribution.stats()

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        lr = self.args.beta_learning_rate or 1e-2
        params = list(self.beta_distribution.parameters())
        if not any(p is q for group in optimizer.param_groups for p in group["params"] for q in params):
            optimizer.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0})
        return optimizer

    def pair_loss(self, delta: torch.Tensor) -> torch.Tensor:
        per_pair = self.beta_distribution.loss(delta.float(), generator=self._beta_generator)
        metrics = self.batch_metrics["train" if self.model.training else "eval"]
        for key, value in self.beta_stats().items():
            metrics[f"beta/{key}"].append(value)
        return per_pair

    def _beta_state(self) -> dict[str, Any]:
        params = {k: float(v.detach()) for k, v in self.beta_distribution.params().items()}
        return {"kind": self.beta_distribution.kind, "params": params, "stats": self.beta_stats()}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            target = Path(output_dir or self.args.output_dir)
            atomic_write_json(target / BETA_FILE, self._beta_state())

    def load_beta_distribution(self, folder: str | Path) -> bool:
        """Restore the beta distribution saved in ``folder`` (checkpoint or saved model); False if none."""
        path = Path(folder) / BETA_FILE
        if not path.is_file():
            return False
        state = json.loads(path.read_text())
        if state.get("kind") != self.beta_distribution.kind:
            kind = self.beta_distribution.kind
            raise ValueError(f"{path}: a {state.get('kind')} distribution, this trainer's is {kind}")
        with torch.no_grad():
            for name, value in state["params"].items():
                getattr(self.beta_distribution, name).fill_(value)
        return True

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; on resume, the beta distribution is restored from the checkpoint first."""
        if resume_from_checkpoint:
            folder = resume_from_checkpoint
            if isinstance(folder, bool):
                from transformers.trainer_utils import get_last_checkpoint

                folder = get_last_checkpoint(self.args.output_dir)
            if folder is not None:
                self.load_beta_distribution(folder)
        return super().train(resume_from_checkpoint, *args, **kwargs)
