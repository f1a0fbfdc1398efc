"""PRISM (HannahRoseKirk/prism-alignment): real people's ratings of several model responses in the same
conversation turn, as per-user comparisons.

The card's ``utterances`` config (``utterances.jsonl``) has one row per rated model response:
``utterance_id, interaction_id, conversation_id, user_id, turn, within_turn_id, user_prompt,
model_response, model_name, model_provider, score`` (1 = Terrible ... 100 = Perfect), ``if_chosen``,
``conversation_type``, ``included_in_balanced_subset``. The opening turn has up to four responses from
different models; later turns two responses of the chosen model. Within one user's turn (``conversation_id``,
``turn``), every pair of responses with different scores becomes a row: the higher score is ``chosen``,
the prompt is that turn's ``user_prompt``. Ties (equal scores) and pairs of identical texts are skipped and
counted, as are turns with a single response. The ``survey`` config (``survey.jsonl``, one row per
``user_id``: demographics, stated preferences, LLM familiarity) goes into the users file, nested fields
flattened one level (``location_reside_country``, ``religion_self_described``...), lists as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.datasets.hub_data import Card, HubData
from pluralign.datasets.hub_files import Source, fail, load_hub, read_local, require_columns, text_column
from pluralign.errors import DataError

__all__ = ["CARD", "NAME", "load_prism", "prism_pairs"]

NAME = "prism"
CARD = Card(
    repo="HannahRoseKirk/prism-alignment",
    url="https://huggingface.co/datasets/HannahRoseKirk/prism-alignment",
    license="Human-written texts (including prompts): CC-BY-4.0; model responses: CC-BY-NC-4.0, and "
    "their use must abide by the original model providers' licenses (dataset card, 'License')",
    attribution="The PRISM Alignment Dataset, Kirk et al. (2024), University of Oxford; "
    "https://github.com/HannahKirk/prism-alignment",
    citation="Kirk, H. R., Whitefield, A., Röttger, P., Bean, A., Margatina, K., Ciro, J., Mosquera, R., "
    "Bartolo, M., Williams, A., He, H., Vidgen, B., & Hale, S. A. (2024). The PRISM Alignment Project. "
    "arXiv:2404.16019",
)
REQUIRED = ("user_id", "conversation_id", "turn", "user_prompt", "model_response", "score")


def load_prism(source_dir: str | Path | None = None, *, dataset: str = NAME) -> Source:
    """The ``utterances`` and (if present) ``survey`` tables, from a local copy or the hub."""
    if source_dir is not None:
        return read_local(source_dir, dataset=dataset, split_of_file=_config_of, include=_is_prism_table)
    utterances = load_hub(CARD.repo, "utterances", dataset=dataset)
    survey = load_hub(CARD.repo, "survey", dataset=dataset)
    tables = {"utterances": _only(utterances), "survey": _only(survey)}
    return Source(tables, utterances.origin.rsplit(":", 1)[0])


def _config_of(path: Path) -> str:
    for part in (path.stem, *reversed(path.parent.parts)):
        for config in ("utterances", "survey"):
            if part.lower().startswith(config):
                return config
    return "other"


def _is_prism_table(path: Path) -> bool:
    return _config_of(path) in ("utterances", "survey")


def _only(source: Source) -> pd.DataFrame:
    return pd.concat(list(source.tables.values()), ignore_index=True)


def prism_pairs(source: Source) -> HubData:
    """Every within-turn pair of differently scored responses as a row of the rating user."""
    if "utterances" not in source.tables:
        raise DataError(f"no utterances file in the local copy of {NAME} (expected utterances.jsonl)")
    u = source.tables["utterances"].reset_index(drop=True)
    require_columns(u, REQUIRED, dataset=NAME)
    users = text_column(u, "user_id")
    prompts = text_column(u, "user_prompt", allow_empty=True)
    responses = text_column(u, "model_response", allow_empty=True)
    conversations = u["conversation_id"].astype(str).to_numpy(dtype=object)
    score = pd.to_numeric(u["score"], errors="coerce").to_numpy(dtype=float)
    fail(u, ~np.isfinite(score), "score", "must be a number (the 1-100 rating)")
    turn = pd.to_numeric(u["turn"], errors="coerce").to_numpy(dtype=float)
    fail(u, ~np.isfinite(turn) | (turn != np.round(turn)), "turn", "must be an integer")

    # ---- one interaction = one user's turn of one conversation -------------------------------------------
    key, _ = pd.factorize(pd.Series(conversations) + "\x00" + pd.Series(turn.astype(np.int64).astype(str)))
    _same_within(u, key, users, "user_id", "one conversation turn has ratings of two users")
    _same_within(u, key, prompts, "user_prompt", "one conversation turn has two different user prompts")
    size = np.bincount(key)
    frame = pd.DataFrame({"key": key, "pos": np.arange(len(u))})
    pairs = frame.merge(frame, on="key", suffixes=("_a", "_b"))
    pairs = pairs[pairs["pos_a"] < pairs["pos_b"]]
    a, b = pairs["pos_a"].to_numpy(), pairs["pos_b"].to_numpy()
    tie = score[a] == score[b]
    same_text = ~tie & (responses[a] == responses[b])
    keep = ~tie & ~same_text
    a, b = a[keep], b[keep]
    first = score[a] > score[b]
    win, lose = np.where(first, a, b), np.where(first, b, a)
    rows = pd.DataFrame(
        {
            "user_id": users[win],
            "prompt": prompts[win],
            "chosen": responses[win],
            "rejected": responses[lose],
            "conversation_id": conversations[win],
            "turn": turn[win].astype(np.int64),
            "chosen_score": score[win],
            "rejected_score": score[lose],
        }
    )
    for column in ("model_name", "conversation_type"):
        if column in u.columns:
            values = u[column].astype(str).to_numpy(dtype=object)
            if column == "model_name":
                rows["chosen_model"], rows["rejected_model"] = values[win], values[lose]
            else:
                rows[column] = values[win]
    order = np.lexsort(
        (rows["turn"].to_numpy(), rows["conversation_id"].to_numpy(), rows["user_id"].to_numpy())
    )
    rows = rows.iloc[order].reset_index(drop=True)

    single = size == 1
    users_frame, user_counts = _users(source.tables.get("survey"), rows, u, users, key, tie, pairs, keep)
    return HubData(
        name=NAME,
        card=CARD,
        parts={"rows": rows},
        users=users_frame,
        origin=source.origin,
        options={},
        skipped={
            "tied_pairs": int(tie.sum()),
            "same_text_pairs": int(same_text.sum()),
            "single_response_turns": int(single.sum()),
        },
        counts={
            "utterances": len(u),
            "turns": len(size),
            "pairs": len(pairs),
            **user_counts,
        },
        files=source.files,
        notes=(
            "prompt = the turn's user_prompt alone (earlier turns of the conversation are not included)",
            "PRISM writes empty user texts as 'EMPTY STRING'; they are kept as written",
        ),
    )


def _same_within(frame: pd.DataFrame, key: np.ndarray, values: np.ndarray, field: str, reason: str) -> None:
    codes, _ = pd.factorize(pd.Series(values, dtype=object))
    first = pd.Series(codes).groupby(key).transform("first").to_numpy()
    fail(frame, codes != first, field, reason)


def _users(
    survey: pd.DataFrame | None,
    rows: pd.DataFrame,
    u: pd.DataFrame,
    users: np.ndarray,
    key: np.ndarray,
    tie: np.ndarray,
    pairs: pd.DataFrame,
    keep: np.ndarray,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Users with rows: counts, then every survey field (flattened one level)."""
    rated = pd.Series(users).groupby(key).first()
    tie_users = rated.to_numpy(dtype=object)[pairs["key"].to_numpy()[tie]]
    frame = (
        pd.DataFrame({"user_id": pd.unique(rows["user_id"])}) if len(rows) else pd.DataFrame({"user_id": []})
    )
    frame["n_rows"] = frame["user_id"].map(rows["user_id"].value_counts()).fillna(0).astype(np.int64)
    frame["n_turns"] = frame["user_id"].map(rated.value_counts()).fillna(0).astype(np.int64)
    frame["n_ties"] = frame["user_id"].map(pd.Series(tie_users).value_counts()).fillna(0).astype(np.int64)
    counts = {"users_rated": int(pd.Series(users).nunique()), "users_with_rows": len(frame)}
    if survey is None:
        counts["users_without_survey"] = len(frame)
        return frame, counts
    require_columns(survey, ("user_id",), dataset=f"{NAME} survey")
    ids = text_column(survey, "user_id")
    fail(survey, pd.Series(ids).duplicated().to_numpy(), "user_id", "user_id appears twice in the survey")
    flat = pd.DataFrame([_flatten(r) for r in survey.drop(columns=["_file", "_line"]).to_dict("records")])
    flat = flat.drop(columns=[c for c in ("n_rows", "n_turns", "n_ties") if c in flat.columns])
    merged = frame.merge(flat, on="user_id", how="left", indicator=True)
    counts["users_without_survey"] = int((merged["_merge"] == "left_only").sum())
    counts["survey_users_without_rows"] = int((~pd.Series(ids).isin(frame["user_id"])).sum())
    return merged.drop(columns="_merge"), counts


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, dict):
            for inner, v in value.items():
                out[f"{name}_{inner}"] = _scalar(v)
        else:
            out[name] = _scalar(value)
    return out


def _scalar(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value
