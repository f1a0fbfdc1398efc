"""Preference data for the DPO family: pairs and rankings, validated, as Hugging Face datasets.

A *ranking* row is ``{"user_id": ..., "prompt": ..., "responses": [best, ..., worst]}`` with at least two
distinct responses; a pair (``chosen``, ``rejected``) is the ranking ``[chosen, rejected]``. Rankings of
three or more responses identify latent preference types where pairs may not (EM-DPO), so the E-step scores
a whole ranking with the Plackett-Luce likelihood. DPO trains on pairs: a ranking is broken into all of its
ordered pairs ("full breaking", which keeps the Plackett-Luce parameters identifiable, unlike adjacent
breaking), each carrying its ranking's user and index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.data.comparisons import PreferenceData
from pluralign.errors import DataError

__all__ = [
    "RANKING_COLUMNS",
    "full_breaking_pairs",
    "pairs_dataset",
    "preferences_to_rankings",
    "rankings_from_records",
    "rankings_to_pairs",
    "read_rankings",
    "tokenize_rankings",
]

RANKING_COLUMNS = ("user_id", "prompt", "responses")


def read_rankings(path: str | Path) -> pd.DataFrame:
    """Read rankings from JSONL (one object per line) or Parquet; pair rows (chosen/rejected) are accepted.

    Returns a frame with ``user_id`` (str), ``prompt`` (str) and ``responses`` (tuple of str, best first).
    Any bad row raises :class:`DataError` naming the file, the line (1-based; Parquet: row) and the field.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DataError("no such file", path=where)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise DataError(f"cannot read Parquet: {exc}", path=where) from exc
        records = frame.to_dict("records")
        lines = list(range(1, len(records) + 1))
    elif suffix in (".jsonl", ".json"):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text (byte {exc.start})", path=where) from exc
        records, lines = [], []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                reason = f"invalid JSON: {exc.msg} (column {exc.colno})"
                raise DataError(reason, path=where, line=number) from exc
            if not isinstance(row, dict):
                raise DataError("expected a JSON object", path=where, line=number)
            records.append(row)
            lines.append(number)
    else:
        raise DataError(f"unknown file type '{path.suffix}' (expected .jsonl, .json or .parquet)", path=where)
    return rankings_from_records(records, source=where, lines=lines)


def rankings_from_records(
    records: Sequence[dict[str, Any]], *, source: str | None = None, lines: Sequence[int] | None = None
) -> pd.DataFrame:
    """Validate ranking (or pair) records into the rankings frame; errors name source, line and field."""
    if len(records) == 0:
        raise DataError("no ranking rows", path=source)
    lines = list(lines) if lines is not None else list(range(1, len(records) + 1))
    users, prompts, responses = [], [], []
    first_of_kind: dict[str, int] = {}  # "ranking" / "pair": line of the first such row
    for row, line in zip(records, lines, strict=True):

        def fail(field: str, reason: str, line: int = line) -> DataError:
            return DataError(reason, path=source, line=line, field=field)

        user = row.get("user_id")
        if isinstance(user, bool) or not isinstance(user, str | int | np.integer) or str(user) == "":
            raise fail("user_id", f"expected a non-empty string or integer, got {_describe(user)}")
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise fail("prompt", f"expected a string, got {_describe(prompt)}")
        if not prompt.strip():
            raise fail("prompt", "empty or whitespace only: every ranking answers a prompt")
        has_ranking = row.get("responses") is not None
        has_pair = "chosen" in row or "rejected" in row
        if has_ranking and has_pair:
            raise fail("responses", "give either 'responses' (best first) or 'chosen' / 'rejected', not both")
        if has_ranking:
            ranked = row["responses"]
            if isinstance(ranked, np.ndarray):
                ranked = ranked.tolist()
            if not isinstance(ranked, list | tuple):
                reason = f"expected a list of strings ordered best first, got {_describe(ranked)}"
                raise fail("responses", reason)
            field, kind = "responses", "ranking"
        elif has_pair:
            ranked = [row.get("chosen"), row.get("rejected")]
            field = "chosen" if not isinstance(ranked[0], str) or not ranked[0].strip() else "rejected"
            kind = "pair"
        else:
            raise fail("responses", "missing: give 'responses' (best first) or 'chosen' and 'rejected'")
        other = "pair" if kind == "ranking" else "ranking"
        if other in first_of_kind:
            raise fail(
                "responses" if kind == "ranking" else "chosen",
                f"a {kind} row in data whose line {first_of_kind[other]} is a {other} row: use one format "
                "per file (a pair is the ranking [chosen, rejected])",
            )
        first_of_kind.setdefault(kind, line)
        for position, text in enumerate(ranked):
            if not isinstance(text, str) or not text.strip():
                name = field if field != "responses" else f"responses[{position}]"
                got = "whitespace only" if isinstance(text, str) and text else _describe(text)
                raise fail(name, f"expected a non-empty string, got {got}")
        if len(ranked) < 2:
            raise fail(field, f"a ranking needs at least 2 responses, got {len(ranked)}")
        if len(set(ranked)) != len(ranked):
            raise fail(field, "responses must be distinct (a response cannot be ranked against itself)")
        users.append(str(user))
        prompts.append(prompt)
        responses.append(tuple(ranked))
    return pd.DataFrame({"user_id": users, "prompt": prompts, "responses": responses})


def _describe(value: Any) -> str:
    if value is None:
        return "null / missing"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def preferences_to_rankings(data: PreferenceData) -> pd.DataFrame:
    """Each comparison of a :class:`PreferenceData` as a ranking of two (its user id carried through)."""
    frame = data.to_frame()
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str).to_numpy(),
            "prompt": frame["prompt"].to_numpy(),
            "responses": list(zip(frame["chosen"], frame["rejected"], strict=True)),
        }
    )


def _ranking_lengths(rankings: pd.DataFrame) -> np.ndarray:
    return np.fromiter((len(r) for r in rankings["responses"]), dtype=np.int64, count=len(rankings))


def full_breaking_pairs(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ranking, better position, worse position) for every ordered pair of every ranking, vectorized."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n_pairs = lengths * (lengths - 1) // 2
    ranking = np.repeat(np.arange(len(lengths)), n_pairs)
    # position of each pair within its ranking, then (i, j) from the upper triangle of an m x m grid
    offset = np.arange(len(ranking)) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    m = lengths[ranking]
    # row i holds m - 1 - i pairs; solve for i with the cumulative count c(i) = i (2m - i - 1) / 2
    i = np.floor(((2 * m - 1) - np.sqrt((2 * m - 1) ** 2 - 8 * offset)) / 2).astype(np.int64)
    start = i * (2 * m - i - 1) // 2
    # guard floating-point round-off of the square root in either direction
    i -= start > offset
    i += (i + 1) * (2 * m - i - 2) // 2 <= offset
    start = i * (2 * m - i - 1) // 2
    j = i + 1 + (offset - start)
    return ranking, i, j


def rankings_to_pairs(rankings: pd.DataFrame) -> pd.DataFrame:
    """Full breaking: every (better, worse) pair of every ranking, with ``user_id`` and ``ranking``."""
    ranking, better, worse = full_breaking_pairs(_ranking_lengths(rankings))
    responses = rankings["responses"].to_numpy()
    return pd.DataFrame(
        {
            "user_id": rankings["user_id"].to_numpy()[ranking],
            "prompt": rankings["prompt"].to_numpy()[ranking],
            "chosen": [responses[r][b] for r, b in zip(ranking, better, strict=True)],
            "rejected": [responses[r][w] for r, w in zip(ranking, worse, strict=True)],
            "ranking": ranking,
        }
    )


def tokenize_rankings(
    tokenizer: Any, rankings: pd.DataFrame, *, chat: bool = False
) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Token ids of each prompt and of each ranked response, exactly as TRL's DPOTrainer tokenizes them.

    ``chat``: the chat-template policy of :mod:`pluralign.dpo.formatting` (raw text + EOS when False).
    Log-probabilities computed outside the trainer (reference, E-step, evaluation) then score the very tokens
    the trainer trains on.
    """
    from pluralign.dpo.formatting import prompt_token_ids, tokenize_completions

    prompts = rankings["prompt"].tolist()
    lengths = _ranking_lengths(rankings)
    owner = np.repeat(np.arange(len(prompts)), lengths)
    flat_prompts = [prompts[o] for o in owner]
    flat_responses = [r for rs in rankings["responses"] for r in rs]
    names = [f"ranking {o + 1}" for o in owner]
    _, completions = tokenize_completions(tokenizer, flat_prompts, flat_responses, chat, row_names=names)
    prompt_ids = prompt_token_ids(tokenizer, prompts, chat)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    per_ranking = [completions[bounds[r] : bounds[r + 1]] for r in range(len(prompts))]
    return prompt_ids, per_ranking


def pairs_dataset(
    rankings: pd.DataFrame,
    tokenizer: Any,
    reference: Any = None,
    *,
    chat: bool = False,
    batch_size: int = 16,
) -> Any:
    """The full-breaking pairs of ``rankings`` as an HF ``Dataset`` in TRL's preference format.

    Columns: ``prompt``, ``chosen``, ``rejected`` (conversational with ``chat``, else raw text: see
    :mod:`pluralign.dpo.formatting`; TRL tokenizes them), ``user_id`` and ``ranking``. Given a
    ``reference`` model, also ``ref_chosen_logps`` / ``ref_rejected_logps``, each distinct (prompt, response)
    scored once on the tokens TRL will build, so the trainers need no reference pass of their own (pass the
    reference as ``ref_model``, or use PEFT). Every row is checked to tokenize the same under every supported
    TRL version (:func:`tokenize_rankings`).
    """
    from datasets import Dataset

    from pluralign.dpo.formatting import trl_prompt, trl_response

    prompt_ids, response_ids = tokenize_rankings(tokenizer, rankings, chat=chat)
    ranking, better, worse = full_breaking_pairs(_ranking_lengths(rankings))
    responses = rankings["responses"].to_numpy()
    prompts = rankings["prompt"].to_numpy()
    columns: dict[str, Any] = {
        "prompt": [trl_prompt(prompts[r], chat) for r in ranking],
        "chosen": [trl_response(responses[r][b], chat) for r, b in zip(ranking, better, strict=True)],
        "rejected": [trl_response(responses[r][w], chat) for r, w in zip(ranking, worse, strict=True)],
        "user_id": rankings["user_id"].to_numpy()[ranking].tolist(),
        "ranking": ranking.tolist(),
    }
    if reference is not None:
        from pluralign.dpo.logps import unique_completion_logps

        n = len(ranking)
        pair_prompts = [prompt_ids[r] for r in ranking]
        logps = unique_completion_logps(
            reference,
            pair_prompts * 2,
            [response_ids[r][b] for r, b in zip(ranking, better, strict=True)]
            + [response_ids[r][w] for r, w in zip(ranking, worse, strict=True)],
            pad_token_id=tokenizer.pad_token_id,
            batch_size=batch_size,
            progress=True,
            desc="reference log-probs",
        )
        columns["ref_chosen_logps"] = logps[:n].tolist()
        columns["ref_rejected_logps"] = logps[n:].tolist()
    return Dataset.from_dict(columns)
