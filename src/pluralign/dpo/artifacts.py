"""Saved policies that standard tools load, and EM-DPO runs restored from disk.

Every policy directory pluralign writes holds either a full model (``config.json``, ``model.safetensors``)
or a PEFT adapter (``adapter_config.json`` whose ``base_model_name_or_path`` is a folder the base loads
from), plus the tokenizer, ``generation_config.json`` and a model card (``README.md`` with ``base_model``,
``library_name``, the method, its hyperparameters, and what was learned). So
``AutoModelForCausalLM.from_pretrained(dir)`` or ``AutoPeftModelForCausalLM.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` load it with nothing else.

EM-DPO: ``type_<t>/`` per type (its own adapter, or its own full model) and ``em_dpo.json`` (types, eta,
posteriors, history, MMRA weights/values/regret, chat-template choice); :func:`load_em_dpo` restores them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.atomic import atomic_write_json, atomic_write_text
from pluralign.dpo.mmra import MinMaxRegret
from pluralign.errors import PluralignError

__all__ = [
    "EM_FILE",
    "LoadedEMDPO",
    "is_adapter_dir",
    "load_em_dpo",
    "load_policy",
    "save_em_dpo",
    "save_policy",
    "write_model_card",
]

EM_FILE = "em_dpo.json"
FORMAT = 1


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def is_adapter_dir(folder: str | Path) -> bool:
    """True for a PEFT adapter directory (``adapter_config.json``)."""
    return (Path(folder) / "adapter_config.json").is_file()


def base_model_of(model: Any) -> str | None:
    """The folder a model (or a PEFT model's base) was loaded from, if it is a local folder that loads."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = getattr(base.config, "name_or_path", None) or getattr(base, "name_or_path", None)
    if name and (Path(name) / "config.json").is_file():
        return str(Path(name).resolve())
    return None


def write_model_card(
    folder: str | Path,
    *,
    title: str,
    base_model: str | None,
    adapter: bool,
    method: str,
    hyperparameters: dict[str, Any],
    learned: dict[str, Any],
    chat_template: bool,
    datasets: list[str] | None = None,
    tags: tuple[str, ...] = ("trl", "dpo"),
) -> Path:
    """``README.md`` with Hugging Face model-card metadata and what was trained, how, and how to load it."""
    folder = Path(folder)
    front = ["---"]
    if base_model:
        front.append(f"base_model: {json.dumps(base_model)}")
    front.append(f"library_name: {'peft' if adapter else 'transformers'}")
    front += ["tags:", "- pluralign", f"- {method}", *[f"- {t}" for t in tags]]
    if datasets:
        front += ["datasets:", *[f"- {json.dumps(d)}" for d in datasets]]
    front.append("---")
    loader = "AutoPeftModelForCausalLM" if adapter else "AutoModelForCausalLM"
    module = "peft" if adapter else "transformers"
    prompt = (
        "the tokenizer's chat template (the prompt is the user turn, with the generation prompt)"
        if chat_template
        else "raw text (no chat template; responses end with EOS)"
    )
    lines = [
        *front,
        "",
        f"# {title}",
        "",
        f"Trained with pluralign ({method}) on TRL {_version('trl')}, transformers {_version('transformers')}"
        + (f", peft {_version('peft')}" if adapter else "")
        + ".",
        "",
        f"Prompt format used in training, and to use when generating: {prompt}.",
        "",
        "## Hyperparameters",
        "",
        "| name | value |",
        "|---|---|",
        *[f"| {k} | {json.dumps(v)} |" for k, v in hyperparameters.items()],
        "",
        "## Learned",
        "",
        "```json",
        json.dumps(learned, indent=2),
        "```",
        "",
        "## Load",
        "",
        "```python",
        f"from {module} import {loader}",
        "from transformers import AutoTokenizer",
        "",
        f'model = {loader}.from_pretrained("{folder.name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{folder.name}")',
        "```",
        "",
    ]
    return atomic_write_text(folder / "README.md", "\n".join(lines))


def save_policy(
    model: Any,
    tokenizer: Any,
    folder: str | Path,
    *,
    base_model_path: str | None,
    adapter_name: str | None = None,
) -> Path:
    """Save one policy as a loadable directory (full model, or the PEFT adapter ``adapter_name`` only).

    The directory is built beside ``folder`` and renamed into place, replacing an older one. For an adapter,
    ``base_model_path`` (a folder with the base model) is recorded as its base; it must load.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        if hasattr(model, "peft_config"):
            name = adapter_name or model.active_adapter
            if not base_model_path or not (Path(base_model_path) / "config.json").is_file():
                raise PluralignError(
                    f"cannot save adapter {name!r} loadably: its base model has no local folder "
                    f"({base_model_path!r}); pass base_model_path= a folder saved with save_pretrained"
                )
            config = model.peft_config[name]
            previous = config.base_model_name_or_path
            config.base_model_name_or_path = str(Path(base_model_path).resolve())
            try:
                model.save_pretrained(staging, selected_adapters=[name])
            finally:
                config.base_model_name_or_path = previous
            nested = staging / name  # PEFT saves an adapter not named "default" in a subfolder
            if nested.is_dir():
                for item in nested.iterdir():
                    os.replace(item, staging / item.name)
                nested.rmdir()
            model.get_base_model().generation_config.save_pretrained(staging)
        else:
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_policy(folder: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a policy directory, with the standard Auto classes only."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if is_adapter_dir(folder):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(folder)
    elif (folder / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(folder)
    else:
        raise PluralignError(f"{folder}: not a saved policy (no config.json or adapter_config.json)")
    model.eval()
    return model, load_policy_tokenizer(folder)


def save_em_dpo(
    em: Any, target: Path, *, base_model_path: str | None = None, card: dict | None = None
) -> Path:
    """Write a trained :class:`~pluralign.dpo.em.EMDPOTrainer`: ``type_<t>/`` per type and ``em_dpo.json``."""
    target.mkdir(parents=True, exist_ok=True)
    card = card or {}
    first = em.policy(0)
    base = base_model_path or base_model_of(first)
    sizes = em.assignments().value_counts().to_dict() if em.posteriors_ is not None else {}
    for t in range(em.n_types):
        folder = save_policy(
            em.policy(t), em.tokenizer, target / f"type_{t}", base_model_path=base, adapter_name=f"type_{t}"
        )
        learned = {
            "type": t,
            "of_types": em.n_types,
            "eta": None if em.eta_ is None else float(em.eta_[t]),
            "users_assigned": int(sizes.get(t, 0)),
        }
        if em.mmra_ is not None:
            learned["mmra_weight"] = em.mmra_["weights"][t]
        write_model_card(
            folder,
            title=f"EM-DPO policy of latent type {t} (of {em.n_types})",
            base_model=base,
            adapter=em.peft,
            method="em-dpo",
            hyperparameters={
                "beta": em.args.beta,
                "learning_rate": em.args.learning_rate,
                **{k: v for k, v in card.items() if k != "datasets"},
            },
            learned=learned,
            chat_template=em.chat_template_,
            datasets=card.get("datasets"),
        )
    state = {
        "format": FORMAT,
        "n_types": em.n_types,
        "peft": em.peft,
        "base_model": base,
        "chat_template": em.chat_template_,
        "beta": em.args.beta,
        "eta": None if em.eta_ is None else em.eta_.tolist(),
        "history": em.history_,
        "posteriors": None
        if em.posteriors_ is None
        else dict(zip(em.users_.tolist(), em.posteriors_.to_numpy().tolist(), strict=True)),
        "mmra": em.mmra_,
    }
    atomic_write_json(target / EM_FILE, state)
    return target


@dataclass
class LoadedEMDPO:
    """A trained EM-DPO restored from disk: type policies, posteriors, eta and the MMRA mixture."""

    folder: Path
    models: list[Any]  # one per type, or one PEFT model holding every type's adapter
    tokenizer: Any
    n_types: int
    peft: bool
    chat_template: bool
    beta: float
    eta: np.ndarray | None
    posteriors: pd.DataFrame | None
    mmra: MinMaxRegret | None
    state: dict[str, Any] = field(repr=False, default_factory=dict)

    def policy(self, t: int) -> Any:
        """Type ``t``'s policy (for LoRA: the shared model with adapter ``type_<t>`` active)."""
        if not 0 <= t < self.n_types:
            raise PluralignError(f"type {t} out of range: this EM-DPO run has types 0..{self.n_types - 1}")
        if self.peft:
            self.models[0].set_adapter(f"type_{t}")
            return self.models[0]
        return self.models[t]

    def type_of(self, user: str) -> int:
        """The most probable type of a training user."""
        if self.posteriors is None:
            raise PluralignError(f"{self.folder}: no posteriors saved (was the run trained?)")
        if str(user) not in self.posteriors.index:
            raise PluralignError(
                f"unknown user {user!r}: not among the {len(self.posteriors)} users this run was trained on "
                "(serve an unknown user with the MMRA mixture)"
            )
        return int(np.argmax(self.posteriors.loc[str(user)].to_numpy()))


def load_em_dpo(folder: str | Path) -> LoadedEMDPO:
    """Restore an EM-DPO run saved by ``EMDPOTrainer.save_model`` (types, posteriors, eta, MMRA)."""
    folder = Path(folder)
    path = folder / EM_FILE
    if not path.is_file():
        raise PluralignError(f"{folder}: not an EM-DPO run (no {EM_FILE})")
    state = json.loads(path.read_text())
    n_types = int(state["n_types"])
    dirs = [folder / f"type_{t}" for t in range(n_types)]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise PluralignError(f"{path}: {n_types} types but missing {', '.join(missing)}")
    if state["peft"]:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(state["base_model"])
        shared = PeftModel.from_pretrained(base, dirs[0], adapter_name="type_0")
        for t in range(1, n_types):
            shared.load_adapter(dirs[t], adapter_name=f"type_{t}")
        shared.eval()
        models = [shared]
        tokenizer = load_policy_tokenizer(dirs[0])
    else:
        loaded = [load_policy(d) for d in dirs]
        models, tokenizer = [m for m, _ in loaded], loaded[0][1]
    posteriors = None
    if state.get("posteriors"):
        users = list(state["posteriors"])
        posteriors = pd.DataFrame(
            [state["posteriors"][u] for u in users],
            index=pd.Index(users, name="user_id"),
            columns=[f"type_{t}" for t in range(n_types)],
        )
    mmra = None
    if state.get("mmra"):
        m = state["mmra"]
        mmra = MinMaxRegret(
            weights=np.asarray(m["weights"]),
            regret=np.asarray(m["regret"]),
            max_regret=float(m["max_regret"]),
        )
    return LoadedEMDPO(
        folder=folder,
        models=models,
        tokenizer=tokenizer,
        n_types=n_types,
        peft=bool(state["peft"]),
        chat_template=bool(state.get("chat_template", False)),
        beta=float(state["beta"]),
        eta=None if state.get("eta") is None else np.asarray(state["eta"]),
        posteriors=posteriors,
        mmra=mmra,
        state=state,
    )


def load_policy_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in a policy directory (pad token set to EOS when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
