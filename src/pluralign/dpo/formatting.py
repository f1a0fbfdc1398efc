"""One chat-template policy for training, scoring and generation.

Policy (``chat_template="auto"``, the default everywhere: Python API, CLI, generation):

- the tokenizer has a chat template (SmolLM2-Instruct does): a prompt is the user turn of a one-turn
  conversation and a response is the assistant turn. Training rows go to TRL in its conversational format
  (``[{"role": "user", ...}]`` / ``[{"role": "assistant", ...}]``) and TRL renders them with the template;
  scoring outside the trainer and generation render the prompt with
  ``apply_chat_template(..., add_generation_prompt=True)``, the very tokens the trainer saw before each
  completion. The completion is what the template puts after the generation prompt (for SmolLM2 the text and
  ``<|im_end|>``);
- no chat template (plain base models, the tiny test models): prompt and response are raw text, the response
  ends with EOS (TRL's plain format), generation continues the raw prompt.

``"on"`` insists on a template (an error without one), ``"off"`` uses raw text even when there is one. A run
resolves the mode once (:func:`use_chat_template`) and records the result (``chat_template: true/false`` in
``summary.json`` and the model card), and generation reads it back, so a policy is always prompted the way it
was trained. Instruct models answer raw prompts poorly (SmolLM2 gave empty text), hence "auto".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pluralign.dpo.compat import prompt_prefix_ok

__all__ = [
    "CHAT_MODES",
    "prompt_token_ids",
    "tokenize_completions",
    "trl_prompt",
    "trl_response",
    "use_chat_template",
]

CHAT_MODES = ("auto", "on", "off")


def use_chat_template(tokenizer: Any, mode: str | bool = "auto") -> bool:
    """Resolve a chat-template mode ("auto", "on", "off", or a bool) for ``tokenizer``."""
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in CHAT_MODES:
        raise ValueError(f"chat_template must be one of {', '.join(CHAT_MODES)}, got {mode!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has_template:
        raise ValueError("chat_template='on' but the tokenizer has no chat template")
    return has_template if mode == "auto" else mode == "on"


def trl_prompt(prompt: str, chat: bool) -> str | list[dict[str, str]]:
    """A prompt in TRL's format: the user turn (chat) or the raw text."""
    return [{"role": "user", "content": prompt}] if chat else prompt


def trl_response(response: str, chat: bool) -> str | list[dict[str, str]]:
    """A response in TRL's format: the assistant turn (chat) or the raw text (TRL appends EOS)."""
    return [{"role": "assistant", "content": response}] if chat else response


def _chat_ids(
    tokenizer: Any, conversations: list[list[dict[str, str]]], generation_prompt: bool
) -> list[list[int]]:
    if not conversations:
        return []
    out = tokenizer.apply_chat_template(
        conversations, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt
    )
    return [list(ids) for ids in out["input_ids"]]


def prompt_token_ids(tokenizer: Any, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt as the trainer sees it before a completion (and generation starts from)."""
    if chat:
        return _chat_ids(tokenizer, [[{"role": "user", "content": p}] for p in prompts], True)
    return [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]


def tokenize_completions(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    chat: bool,
    *,
    row_names: Sequence[str] | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, completion ids) of each (prompt, response), exactly as TRL's DPOTrainer tokenizes them.

    TRL tokenizes the prompt and the prompt + response and keeps the tail as the completion. A row whose
    prompt tokens do not start the prompt + response tokens (a token merging across the boundary, e.g. a
    prompt ending in a space) is refused: TRL versions cut such rows at different places
    (:mod:`pluralign.dpo.compat`), and the model would train on a context it never sees when generating.
    ``row_names`` name the rows in that error (default "row 1", "row 2", ...).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    prompt_ids = prompt_token_ids(tokenizer, prompts, chat)
    if chat:
        conversations = [
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
            for p, r in zip(prompts, responses, strict=True)
        ]
        full_ids = _chat_ids(tokenizer, conversations, False)
    else:
        eos = tokenizer.eos_token or ""
        texts = [p + (r if r.endswith(eos) else r + eos) for p, r in zip(prompts, responses, strict=True)]
        full_ids = [list(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    completions = []
    for row, (p_ids, f_ids) in enumerate(zip(prompt_ids, full_ids, strict=True)):
        if not prompt_prefix_ok(p_ids, f_ids):
            name = row_names[row] if row_names is not None else f"row {row + 1}"
            raise ValueError(
                f"{name}: the prompt's tokens are not a prefix of prompt + response (prompt "
                f"{prompts[row][-40:]!r}, response {responses[row][:40]!r}); end the prompt on a token "
                "boundary (e.g. no trailing space) or use the chat template"
            )
        completions.append(f_ids[len(p_ids) :])
    return prompt_ids, completions
