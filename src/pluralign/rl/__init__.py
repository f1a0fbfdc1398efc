"""Personalized rewards for online RL, and personalized policies from them.

    reward = PersonalReward.from_estimator("runs/pal")                 # per user (the ``user_id`` column)
    reward = PersonalReward.from_estimator(est, mode=1)                # prototype 1's reward
    reward = PersonalReward.from_service("http://127.0.0.1:8000")      # a running ``pluralign serve``
    GRPOTrainer(model, reward_funcs=reward, train_dataset=..., ...)

    policies = PrototypePolicies("runs/pal", "smollm2").fit(prompts)   # one GRPO LoRA per prototype
    policies.generate("How do I boil an egg?", "ana")                  # unknown users: the MMRA mixture

The reward callable needs no TRL (TRL calls it); see docs/rl.md and docs/policies.md.
"""

from typing import Any

from pluralign.rl.rewards import PersonalReward, normalize_per_prompt, render_completions

__all__ = [
    "PersonalReward",
    "PrototypePolicies",
    "PrototypePolicyConfig",
    "Route",
    "normalize_per_prompt",
    "render_completions",
]


def __getattr__(name: str) -> Any:
    if name in ("PrototypePolicies", "PrototypePolicyConfig", "Route"):
        from pluralign.rl import policies

        return getattr(policies, name)
    raise AttributeError(f"module 'pluralign.rl' has no attribute {name!r}")
