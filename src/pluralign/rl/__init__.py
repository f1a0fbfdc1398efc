"""Personalized rewards for online RL: reward functions for TRL's ``GRPOTrainer`` / ``RLOOTrainer``.

    reward = PersonalReward.from_estimator("runs/pal")                 # per user (the ``user_id`` column)
    reward = PersonalReward.from_estimator(est, mode=1)                # prototype 1's reward
    reward = PersonalReward.from_service("http://127.0.0.1:8000")      # a running ``pluralign serve``
    GRPOTrainer(model, reward_funcs=reward, train_dataset=..., ...)

The callable needs no TRL (TRL calls it); see docs/rl.md.
"""

from pluralign.rl.rewards import PersonalReward, normalize_per_prompt, render_completions

__all__ = ["PersonalReward", "normalize_per_prompt", "render_completions"]
