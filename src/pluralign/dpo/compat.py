"""What pluralign assumes about the installed TRL, in one place, checked with one clear line.

The trainers use only TRL's public extension points (``compute_loss``, ``log``, ``create_optimizer``,
``save_model``, ``train``, ``prediction_step``, a data collator, ``compute_ref_log_probs``, and datasets
prepared before the trainer). Two behaviours of TRL that are not extension points still matter, and live
here:

- supported versions: ``trl>=1.13,<2`` (and the transformers / peft that TRL works with); anything else fails
  at import of the trainers with one line naming what is installed and what is supported;
- how TRL splits a tokenized ``prompt + response`` into prompt and completion: TRL < 1.15 cuts at the length
  of the tokenized prompt, 1.15 and later at the prefix the two tokenizations share. pluralign scores
  responses outside the trainer (reference log-probs once, EM-DPO's E-step, evaluation), so it must cut
  where TRL does; :func:`prompt_prefix_ok` lets the data layer refuse rows where the two rules would differ
  (the prompt's tokens are not a prefix of the prompt + response tokens), so both rules agree on every row
  pluralign trains on.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

from pluralign.errors import PluralignError

__all__ = ["SUPPORTED", "check_versions", "installed_versions", "prompt_prefix_ok"]

# package: (lowest supported, first unsupported); the lowest ones are pinned in constraints/lowest.txt
SUPPORTED: dict[str, tuple[str, str]] = {
    "trl": ("1.13", "2"),
    "transformers": ("5.23", "6"),
    "peft": ("0.21", "1"),
    "accelerate": ("1.15", "2"),
    "datasets": ("5.2", "6"),
}


def installed_versions() -> dict[str, str | None]:
    """Installed version of each package of the DPO stack (None when it is not installed)."""
    found: dict[str, str | None] = {}
    for name in SUPPORTED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def check_versions(required: tuple[str, ...] = ("trl", "transformers", "accelerate", "datasets")) -> None:
    """Raise :class:`PluralignError` (one line) unless each ``required`` package is in its supported range."""
    problems = []
    for name, got in installed_versions().items():
        if name not in required:
            continue
        low, high = SUPPORTED[name]
        if got is None:
            problems.append(f"{name} is not installed")
        elif not Version(low) <= Version(got) < Version(high):
            problems.append(f"{name} {got} is outside the supported >={low},<{high}")
    if problems:
        hint = " (install with `pip install 'pluralign[dpo]'`)"
        raise PluralignError("pluralign's DPO trainers: " + "; ".join(problems) + hint)


def prompt_prefix_ok(prompt_ids: list[int], full_ids: list[int]) -> bool:
    """True when the prompt's tokens start the prompt + response tokens: every TRL version cuts there."""
    return full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids)
