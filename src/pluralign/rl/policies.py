"""One policy per prototype: a LoRA adapter per PAL prototype, trained with GRPO on that prototype's reward.

PAL writes every user's reward as a mixture of K prototype rewards, r_u = sum_k w_uk r_k. Training one
policy for each r_k (K LoRA adapters on one shared base, :class:`PrototypePolicies`) gives a small library
of policies that covers the population:

* a known user is served the adapter of their largest weight (``strategy="argmax"``) or one drawn in
  proportion to their weights (``"sample"``);
* a user whose preferences are unknown is served the min-max-regret mixture over the K policies
  (:func:`pluralign.dpo.mmra.min_max_regret`): ``U[k, s]`` is prototype k's mean reward of policy s's
  answers to the evaluation prompts, rescaled per prototype to [0, 1] (rewards fix a prototype's utilities
  only up to scale and shift), and the mixture minimises the worst prototype's regret.

GRPO is TRL's ``GRPOTrainer`` (public API only) with :class:`~pluralign.rl.PersonalReward` in prototype
mode; the reward model reads the prompt and the answer's text as its training rows held them (plain text,
not chat-formatted), while the policy sees the prompt in the format :mod:`pluralign.dpo.formatting` picks
(the chat template when the tokenizer has one). Each adapter trains in its own seeded stream; the caller's
RNG states (python, numpy, torch), which Hugging Face's ``Trainer`` reseeds, are restored afterwards.

Saved as ``policies.json`` (routing table, values, MMRA, history) and ``prototype_<k>/``: a PEFT adapter
directory each, loadable with ``AutoPeftModelForCausalLM.from_pretrained(dir)`` (its base is recorded as a
local folder), with tokenizer and model card.

    pluralign rl train runs/pal prompts.txt --policy smollm2 --out runs/policies
    pluralign rl generate runs/policies --user ana --prompt "How do I boil an egg?"
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from pluralign.atomic import atomic_write_json
from pluralign.errors import PluralignError
from pluralign.models.base import seeded_rng

if TYPE_CHECKING:
    from pluralign.dpo.mmra import MinMaxRegret
    from pluralign.estimator import PALEstimator

__all__ = ["POLICIES_FILE", "PrototypePolicies", "PrototypePolicyConfig", "Route"]

POLICIES_FILE = "policies.json"
FORMAT = 1


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class PrototypePolicyConfig:
    """How each prototype's policy trains (GRPO with LoRA) and how the policies are compared."""

    max_steps: int = field(default=40, metadata=_help("GRPO optimizer steps per prototype."))
    learning_rate: float = field(default=3e-4, metadata=_help("Learning rate of the LoRA weights."))
    prompts_per_step: int = field(default=4, metadata=_help("Prompts per optimizer step."))
    num_generations: int = field(
        default=4, metadata=_help("Answers sampled per prompt (GRPO's group; advantages are within it).")
    )
    max_completion_length: int = field(default=48, metadata=_help("Tokens per sampled answer at most."))
    temperature: float = field(default=1.0, metadata=_help("Sampling temperature in training."))
    kl_beta: float = field(
        default=0.0, metadata=_help("KL penalty to the base model (GRPO's beta; 0: none, no reference pass).")
    )
    lora_r: int = field(default=8, metadata=_help("LoRA rank."))
    lora_alpha: int = field(default=16, metadata=_help("LoRA alpha (scale alpha / r)."))
    lora_targets: str = field(
        default="q_proj,k_proj,v_proj,o_proj", metadata=_help("Modules that get LoRA weights (comma list).")
    )
    normalize_rewards: bool = field(
        default=False, metadata=_help("Z-score rewards per prompt before GRPO (it scales per group anyway).")
    )
    eval_samples: int = field(
        default=4, metadata=_help("Answers per evaluation prompt and policy for the MMRA values.")
    )
    chat_template: str = field(
        default="auto",
        metadata=_help("Prompt format for the policy: auto (if the tokenizer has one), on, off."),
    )
    logging_steps: int = field(default=5, metadata=_help("Record GRPO's metrics every N steps."))
    seed: int = field(default=0, metadata=_help("Random seed (prototype k trains with seed + k)."))

    def __post_init__(self) -> None:
        positive = ("max_steps", "prompts_per_step", "max_completion_length", "lora_r", "lora_alpha")
        for name in (*positive, "eval_samples", "logging_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PluralignError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_generations < 2:
            raise PluralignError(
                f"num_generations must be >= 2 (GRPO compares answers), got {self.num_generations}"
            )
        for name in ("learning_rate", "temperature"):
            if not getattr(self, name) > 0:
                raise PluralignError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.kl_beta >= 0:
            raise PluralignError(f"kl_beta must be >= 0, got {self.kl_beta}")
        if self.chat_template not in ("auto", "on", "off"):
            raise PluralignError(f"chat_template must be auto, on or off, got {self.chat_template!r}")
        if not self.targets():
            raise PluralignError("lora_targets names no module")

    def targets(self) -> list[str]:
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


@dataclass(frozen=True)
class Route:
    """Which prototype policy serves a request, and why (``source``: user-argmax, user-sample, weights,
    mmra)."""

    prototype: int
    source: str
    user: str | None = None
    known_user: bool = False
    weights: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Python's, numpy's and torch's global RNGs seeded by ``seed`` inside the block and given back their
    own states afterwards: Hugging Face's ``Trainer`` reseeds all three (``set_seed``)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002 - restoring what HF reseeds
    try:
        with seeded_rng(seed):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002


def _adapter(k: int) -> str:
    return f"prototype_{k}"


class _PlainTextReward:
    """Prototype k's reward of GRPO's answers, read as the reward model's training rows: the prompt as
    given (the dataset's ``reward_prompt`` column, not the chat-formatted prompt) and the answer's text."""

    def __init__(self, reward: Any) -> None:
        self.reward = reward
        self.__name__ = reward.__name__  # TRL logs rewards/<__name__>

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return self.reward.rewards(list(columns["reward_prompt"]), [t.strip() for t in texts]).tolist()


class PrototypePolicies:
    """K LoRA policies on one base, one per prototype of a PAL reward model (module docstring).

    ``reward_model``: a fitted estimator or a ``pluralign train`` run directory (needed to :meth:`fit`;
    a loaded instance routes and generates without it). ``policy``: ``"smollm2"`` or a local Hugging Face
    causal-LM folder (the base the adapters are trained on).

    Fitted attributes: ``model_`` (a PEFT model holding every adapter), ``tokenizer_``, ``chat_template_``,
    ``user_weights_`` (the reward model's users x K weights, the routing table), ``values_`` [K, K]
    (prototype k's mean reward of policy s's answers), ``base_values_`` [K] (the same for the base model),
    ``mmra_`` (the mixture for unknown users), ``history_`` (per prototype: steps, seconds, logged metrics).
    """

    def __init__(
        self,
        reward_model: PALEstimator | str | Path | None = None,
        policy: str = "smollm2",
        config: PrototypePolicyConfig | None = None,
    ) -> None:
        self.reward_model = reward_model
        self.policy = policy
        self.config = config or PrototypePolicyConfig()

    # --- training ---------------------------------------------------------------------------------------
    def fit(
        self,
        prompts: Sequence[str],
        eval_prompts: Sequence[str] | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        progress: bool = False,
    ) -> PrototypePolicies:
        """Train prototype k's adapter with GRPO on ``prompts`` for every k, then measure the MMRA values on
        ``eval_prompts`` (default: the training prompts). ``model``/``tokenizer``: a base already loaded
        (else ``policy`` is loaded); it gets the adapters in place and becomes ``model_``'s base."""
        from peft import LoraConfig, get_peft_model

        from pluralign.dpo.formatting import use_chat_template
        from pluralign.rl.rewards import PersonalReward

        prompts = _check_prompts(prompts, "prompts")
        eval_prompts = prompts if eval_prompts is None else _check_prompts(eval_prompts, "eval_prompts")
        est = self._reward_model()
        weights = est.user_weights().to_numpy()
        if (weights < -1e-6).any() or not np.allclose(weights.sum(axis=1), 1.0, atol=1e-4):
            raise PluralignError(
                f"{type(est).__name__}'s user vectors are not weights over prototypes (PAL-A/PAL-B/LoRe/BTL "
                "have them; MatrixFactorization and PerUser do not): no prototype policies to route to"
            )
        config = self.config
        if (model is None) != (tokenizer is None):
            raise PluralignError("pass both model and tokenizer, or neither")
        if model is None:
            from pluralign.dpo.run import load_causal_lm

            model, tokenizer = load_causal_lm(self.policy)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        chat = use_chat_template(tokenizer, config.chat_template)
        k_count = int(est.model_.n_prototypes)
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            target_modules=config.targets(),
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
        with isolated_rng(config.seed):  # LoRA's A matrices are drawn from torch's default generator
            peft_model = get_peft_model(model, lora, adapter_name=_adapter(0))
            for k in range(1, k_count):
                peft_model.add_adapter(_adapter(k), lora)
        history = []
        for k in range(k_count):
            reward = _PlainTextReward(
                PersonalReward.from_estimator(est, mode=k, normalize=config.normalize_rewards)
            )
            history.append(self._train_one(peft_model, tokenizer, prompts, chat, k, reward, progress))
        self.model_, self.tokenizer_, self.chat_template_ = peft_model, tokenizer, chat
        self.user_weights_ = est.user_weights()
        self.history_ = history
        self.values_, self.base_values_ = self._values(est, eval_prompts)
        self.mmra_ = _mmra(self.values_)
        self.settings_ = {
            "prompts": len(prompts),
            "eval_prompts": len(eval_prompts),
            "values_on": "training prompts" if eval_prompts is prompts else "evaluation prompts",
            "base_model": _base_path(peft_model),
            "reward_model": None if not isinstance(self.reward_model, str | Path) else str(self.reward_model),
        }
        return self

    def _train_one(
        self, model: Any, tokenizer: Any, prompts: list[str], chat: bool, k: int, reward: Any, progress: bool
    ) -> dict[str, Any]:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        from pluralign.dpo.formatting import trl_prompt

        config = self.config
        use_cache = model.config.use_cache  # GRPO turns the KV cache off for training; generation wants it
        model.set_adapter(_adapter(k))  # only this adapter trains (the others are frozen)
        dataset = Dataset.from_dict(
            {"prompt": [trl_prompt(p, chat) for p in prompts], "reward_prompt": prompts}
        )
        # a batch needs prompts_per_step distinct prompts: with fewer, TRL's sampler yields no batch at all
        per_step = min(config.prompts_per_step, len(prompts))
        with tempfile.TemporaryDirectory(prefix="pluralign-grpo-") as scratch:
            args = GRPOConfig(
                output_dir=scratch,
                per_device_train_batch_size=per_step * config.num_generations,
                num_generations=config.num_generations,
                max_completion_length=config.max_completion_length,
                temperature=config.temperature,
                beta=config.kl_beta,
                learning_rate=config.learning_rate,
                max_steps=config.max_steps,
                logging_steps=config.logging_steps,
                save_strategy="no",
                report_to=[],
                gradient_checkpointing=False,
                # as pluralign.dpo.run: TRL's bf16 default would leave the forward in bf16 autocast on CPU
                use_cpu=not torch.cuda.is_available(),
                bf16=torch.cuda.is_available(),
                seed=config.seed + k,
                data_seed=config.seed + k,
                disable_tqdm=not progress,
            )
            with isolated_rng(config.seed + k):
                trainer = GRPOTrainer(
                    model=model,
                    reward_funcs=reward,
                    args=args,
                    train_dataset=dataset,
                    processing_class=tokenizer,
                )
                if not progress:  # HF's Trainer would print every log dict to stdout (ours is for results)
                    from transformers.trainer_callback import PrinterCallback

                    trainer.remove_callback(PrinterCallback)
                start = time.perf_counter()
                trainer.train()
                seconds = time.perf_counter() - start
        model.config.use_cache = use_cache
        logs = [
            {key: float(v) for key, v in row.items() if isinstance(v, int | float)}
            for row in trainer.state.log_history
            if "loss" in row or "reward" in row
        ]
        steps = int(trainer.state.global_step)
        if steps < config.max_steps:
            raise PluralignError(f"prototype {k}: GRPO ran {steps} of {config.max_steps} steps")
        return {
            "prototype": k,
            "steps": steps,
            "prompts_per_step": per_step,
            "seconds": seconds,
            "seconds_per_step": seconds / max(steps, 1),
            "log": logs,
        }

    def _values(self, est: PALEstimator, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(values [K prototypes, K policies], base values [K]): mean prototype rewards of sampled answers."""
        k_count = int(est.model_.n_prototypes)
        answers = [self.sample(prompts, k) for k in range(k_count)]
        with self.model_.disable_adapter():
            answers.append(self.sample(prompts, None))
        n = self.config.eval_samples
        texts = [t for policy in answers for t in policy]
        contexts = [p for _ in answers for p in prompts for _ in range(n)]
        rows = len(texts)
        weights = np.repeat(np.eye(k_count), rows, axis=0)  # every answer scored by every prototype
        rewards = est.reward(None, contexts * k_count, texts * k_count, weights=weights)
        means = rewards.reshape(k_count, len(answers), -1).mean(axis=2)  # [K prototypes, K + 1 policies]
        return means[:, :k_count], means[:, k_count]

    # --- serving ----------------------------------------------------------------------------------------
    def route(
        self,
        user: str | None = None,
        *,
        weights: Sequence[float] | None = None,
        strategy: str = "argmax",
        seed: int = 0,
    ) -> Route:
        """The prototype policy for a request: a known ``user``'s (``strategy`` argmax or sample), fixed
        ``weights``'s, or, for an unknown user (or neither), one drawn from the MMRA mixture (``seed``)."""
        self._check_fitted()
        if strategy not in ("argmax", "sample"):
            raise PluralignError(f"strategy must be 'argmax' or 'sample', got {strategy!r}")
        if weights is not None and user is not None:
            raise PluralignError("give a user or weights, not both")
        k_count = self.n_prototypes
        rng = np.random.default_rng(seed)
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (k_count,) or not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
                raise PluralignError(
                    f"weights must be {k_count} non-negative numbers, not all 0, got {list(weights)!r}"
                )
            w = w / w.sum()
            return Route(_pick(w, strategy, rng), f"weights-{strategy}", weights=w.tolist())
        if user is not None and str(user) in self.user_weights_.index:
            w = self.user_weights_.loc[str(user)].to_numpy(dtype=np.float64)
            return Route(_pick(w, strategy, rng), f"user-{strategy}", str(user), True, w.tolist())
        k = int(self.mmra_.sample(rng=rng))
        return Route(k, "mmra", None if user is None else str(user), False, self.mmra_.weights.tolist())

    def sample(
        self, prompts: Sequence[str], prototype: int | None, *, n: int | None = None, seed: int = 0
    ) -> list[str]:
        """``n`` (default ``eval_samples``) sampled answers per prompt from prototype ``prototype``'s policy
        (None: the base model, when called inside ``model_.disable_adapter()``), prompt-major, stripped."""
        from pluralign.dpo.generate import generate_texts

        if prototype is not None:
            self.model_.set_adapter(_adapter(prototype))
        n = n or self.config.eval_samples
        out = []
        for i, prompt in enumerate(prompts):
            out += generate_texts(
                self.model_,
                self.tokenizer_,
                prompt,
                chat=self.chat_template_,
                n=n,
                max_new_tokens=self.config.max_completion_length,
                do_sample=True,
                temperature=self.config.temperature,
                seed=seed + i,
            )
        return [t.strip() for t in out]

    def generate(
        self,
        prompt: str,
        user: str | None = None,
        *,
        weights: Sequence[float] | None = None,
        strategy: str = "argmax",
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        seed: int = 0,
    ) -> dict[str, Any]:
        """The routed policy's answer to ``prompt`` and the route (what served it and why)."""
        from pluralign.dpo.generate import generate_text

        route = self.route(user, weights=weights, strategy=strategy, seed=seed)
        self.model_.set_adapter(_adapter(route.prototype))
        text = generate_text(
            self.model_,
            self.tokenizer_,
            prompt,
            chat=self.chat_template_,
            max_new_tokens=max_new_tokens or self.config.max_completion_length,
            do_sample=do_sample,
            seed=seed,
        )
        return {
            "prompt": prompt,
            "text": text.strip(),
            "chat_template": self.chat_template_,
            **route.to_dict(),
        }

    # --- persistence ------------------------------------------------------------------------------------
    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``policies.json`` and one adapter directory per prototype; built beside ``folder`` and
        renamed into place (a crash leaves no half-written folder)."""
        from pluralign.dpo.artifacts import save_policy, write_model_card

        self._check_fitted()
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()) and not overwrite:
            raise PluralignError(f"{folder} exists and is not empty (pass overwrite=True / --overwrite)")
        base = _base_path(self.model_)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
        try:
            for k in range(self.n_prototypes):
                target = staging / _adapter(k)
                save_policy(
                    self.model_, self.tokenizer_, target, base_model_path=base, adapter_name=_adapter(k)
                )
                write_model_card(
                    target,
                    title=f"pluralign prototype {k} policy (GRPO, LoRA)",
                    base_model=base,
                    adapter=True,
                    method="prototype-policy",
                    hyperparameters=asdict(self.config),
                    learned={
                        "prototype": k,
                        "values": self.values_[:, k].tolist(),
                        "mmra_weight": float(self.mmra_.weights[k]),
                    },
                    chat_template=self.chat_template_,
                    tags=("trl", "grpo"),
                )
            atomic_write_json(staging / POLICIES_FILE, self._state())
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def _state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "n_prototypes": self.n_prototypes,
            "adapters": [_adapter(k) for k in range(self.n_prototypes)],
            "chat_template": self.chat_template_,
            "config": asdict(self.config),
            "settings": self.settings_,
            "users": self.user_weights_.index.tolist(),
            "user_weights": self.user_weights_.to_numpy().tolist(),
            "values": self.values_.tolist(),
            "base_values": self.base_values_.tolist(),
            "mmra": {
                "weights": self.mmra_.weights.tolist(),
                "regret": self.mmra_.regret.tolist(),
                "max_regret": self.mmra_.max_regret,
                "normalize": True,
            },
            "history": self.history_,
        }

    @classmethod
    def load(cls, folder: str | Path) -> PrototypePolicies:
        """Restore saved policies (adapters on their recorded base, routing table, values, MMRA)."""
        from peft import AutoPeftModelForCausalLM

        from pluralign.dpo.artifacts import load_policy_tokenizer
        from pluralign.dpo.mmra import MinMaxRegret

        folder = Path(folder)
        path = folder / POLICIES_FILE
        if not path.is_file():
            raise PluralignError(f"{folder}: not a `pluralign rl train` output (no {POLICIES_FILE})")
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PluralignError(f"{path}: unreadable ({exc})") from None
        if state.get("format") != FORMAT:
            raise PluralignError(f"{path}: format {state.get('format')!r}, this pluralign reads {FORMAT}")
        known = {f.name for f in fields(PrototypePolicyConfig)}
        out = cls(
            None, config=PrototypePolicyConfig(**{k: v for k, v in state["config"].items() if k in known})
        )
        names = state["adapters"]
        model = AutoPeftModelForCausalLM.from_pretrained(folder / names[0], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(folder / name, adapter_name=name)
        model.eval()
        out.model_, out.tokenizer_ = model, load_policy_tokenizer(folder / names[0])
        if out.tokenizer_.pad_token is None:
            out.tokenizer_.pad_token = out.tokenizer_.eos_token
        out.chat_template_ = bool(state["chat_template"])
        k_count = int(state["n_prototypes"])
        out.user_weights_ = pd.DataFrame(
            np.asarray(state["user_weights"], dtype=np.float64).reshape(-1, k_count),
            index=pd.Index(state["users"], name="user_id"),
            columns=[f"w{k}" for k in range(k_count)],
        )
        out.values_ = np.asarray(state["values"], dtype=np.float64)
        out.base_values_ = np.asarray(state["base_values"], dtype=np.float64)
        mmra = state["mmra"]
        out.mmra_ = MinMaxRegret(
            np.asarray(mmra["weights"]), np.asarray(mmra["regret"]), float(mmra["max_regret"])
        )
        out.history_, out.settings_ = state["history"], state["settings"]
        return out

    # --- helpers ----------------------------------------------------------------------------------------
    @property
    def n_prototypes(self) -> int:
        self._check_fitted()
        return int(self.values_.shape[1])

    def _check_fitted(self) -> None:
        if not hasattr(self, "values_"):
            raise PluralignError("PrototypePolicies is not fitted: call fit() or PrototypePolicies.load()")

    def _reward_model(self) -> PALEstimator:
        if self.reward_model is None:
            raise PluralignError("training needs the reward model (PrototypePolicies(reward_model=...))")
        if isinstance(self.reward_model, str | Path):
            from pluralign.dpo.best_of_n import load_reward_model

            return load_reward_model(self.reward_model)
        self.reward_model.check_fitted()
        return self.reward_model

    def __repr__(self) -> str:
        fitted = f", K={self.n_prototypes}" if hasattr(self, "values_") else ""
        return f"PrototypePolicies(policy={self.policy!r}{fitted})"


def _pick(weights: np.ndarray, strategy: str, rng: np.random.Generator) -> int:
    if strategy == "argmax":
        return int(np.argmax(weights))
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def _mmra(values: np.ndarray) -> MinMaxRegret:
    from pluralign.dpo.mmra import min_max_regret

    return min_max_regret(values, normalize=True)


def _base_path(model: Any) -> str | None:
    from pluralign.dpo.artifacts import base_model_of

    return base_model_of(model)


def _check_prompts(prompts: Sequence[str], name: str) -> list[str]:
    if isinstance(prompts, str):
        raise PluralignError(f"{name} must be a list of prompts, not one string")
    prompts = list(prompts)
    if not prompts:
        raise PluralignError(f"{name} is empty")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise PluralignError(f"{name}: not a non-empty string at position(s) {bad[:5]}")
    return prompts
