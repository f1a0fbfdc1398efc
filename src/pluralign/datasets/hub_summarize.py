"""OpenAI's summarize-from-feedback comparisons (openai/summarize_from_feedback, config ``comparisons``) as
per-worker rows, and the length-preference variant of P-DPO (Li et al., 2024, Sec. 6.1) that the PAL paper
trains on (App. D.3 of arXiv:2406.08469).

Each record (the card's schema): ``info`` {``id, post, title, subreddit, site, article``}, ``summaries``
[{``text, policy, note``}, {...}] (two), ``choice`` (0/1: the index of the preferred summary), ``worker``,
``batch``, ``split`` (``train``/``valid1``/``valid2``), ``extra`` {``confidence``}. The hub has two splits,
``train`` and ``validation``; in a local copy a file's split comes from its name (``*train*``,
``*valid*``), else from each record's ``split`` field (``train`` -> train, ``valid1``/``valid2`` ->
validation).

**summarize**: one row per comparison, ``user_id`` = the worker, ``chosen`` = ``summaries[choice].text``.
Records without a Reddit post (CNN/DM articles), with a missing summary text, or with two identical
summaries are skipped and counted.

**summarize-length** (PAL App. D.3, following Li et al. 2024 Sec. 6.1): keep comparisons whose two summaries
both come from supervised policies (``policy`` contains ``sup`` and not ``ppo``); the ten workers with the
most such comparisons in ``train`` are the *seen* users, ranks 4-6 (``minority_ranks``, 0-based 3, 4, 5)
the minority that prefers the shorter summary, the other seven the majority that prefers the longer one;
every comparison is relabelled by character length (``chosen`` = the longer summary for the majority, the
shorter for the minority). Seen rows: ``train`` from the hub's train split, ``test`` from validation.
*Unseen* users: the other workers with at least ``unseen_min_pairs`` (100) valid comparisons (no missing
values) in validation, 70% of them (``unseen_longer``; rounded) drawn with a seeded numpy Generator to
prefer longer summaries, the rest shorter. Pairs of equal length have no length preference: skipped and
counted (PAL's released code labels them as preferring the second summary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.datasets.hub_data import Card, HubData, with_row_counts
from pluralign.datasets.hub_files import (
    Source,
    as_records,
    fail,
    load_hub,
    read_local,
    require_columns,
    split_of,
)
from pluralign.errors import DataError

__all__ = [
    "CARD",
    "PROMPT_FORMATS",
    "load_summarize",
    "summarize_comparisons",
    "summarize_length",
]

CARD = Card(
    repo="openai/summarize_from_feedback",
    config="comparisons",
    url="https://huggingface.co/datasets/openai/summarize_from_feedback",
    license="The dataset card states no license; the data is released by OpenAI with "
    "https://github.com/openai/summarize-from-feedback (code MIT); Reddit posts are from the TL;DR dataset",
    attribution="Stiennon et al. (2020), Learning to summarize from human feedback, NeurIPS",
    citation="Stiennon, N., Ouyang, L., Wu, J., Ziegler, D. M., Lowe, R., Voss, C., Radford, A., Amodei, D., "
    "& Christiano, P. (2020). Learning to summarize from human feedback. NeurIPS. arXiv:2009.01325",
)
LENGTH_SOURCE = (
    "Length-preference variant: PAL (Chen et al., arXiv:2406.08469) App. D.3, after P-DPO (Li et al., "
    "arXiv:2402.05133) Sec. 6.1"
)
#: how a Reddit post becomes the prompt
PROMPT_FORMATS = {
    "tldr": "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:",
    "post": "{post}",
}
FIELD_SPLITS = {"train": "train", "valid1": "validation", "valid2": "validation"}


def load_summarize(source_dir: str | Path | None = None, *, dataset: str = "summarize") -> Source:
    """The comparisons by split (train, validation), from a local copy or the hub."""
    if source_dir is None:
        return load_hub(CARD.repo, CARD.config, dataset=dataset)
    source = read_local(source_dir, dataset=dataset, split_of_file=lambda p: split_of(p, default="?"))
    tables = {k: v for k, v in source.tables.items() if k != "?"}
    if "?" in source.tables:  # no split in the file name: the records say
        mixed = source.tables["?"]
        require_columns(mixed, ("split",), dataset="summarize")
        values = mixed["split"].astype(str)
        fail(mixed, ~values.isin(list(FIELD_SPLITS)).to_numpy(), "split", "must be train, valid1 or valid2")
        for split, part in mixed.groupby(values.map(FIELD_SPLITS).to_numpy(), sort=True):
            tables[split] = pd.concat([tables.get(split, part.iloc[:0]), part], ignore_index=True)
    return Source(tables, source.origin, source.files)


# ========================================================================================================
# parsing
# ========================================================================================================
def _parse(frame: pd.DataFrame, prompt_format: str) -> pd.DataFrame:
    """Check the card's schema and flatten: one row per record with texts (None where missing)."""
    require_columns(frame, ("info", "summaries", "choice", "worker"), dataset="summarize")
    n = len(frame)
    info = frame["info"].to_numpy(dtype=object)
    fail(frame, np.array([not isinstance(x, dict) for x in info], dtype=bool), "info", "must be an object")
    summaries = [as_records(x) for x in frame["summaries"].to_numpy(dtype=object)]
    bad = np.array([s is None or len(s) != 2 or not all(isinstance(x, dict) for x in s) for s in summaries])
    fail(frame, bad, "summaries", "must be a list of two objects ({text, policy, note})")
    choice = pd.to_numeric(frame["choice"], errors="coerce").to_numpy(dtype=float)
    fail(frame, ~np.isin(choice, (0, 1)), "choice", "must be 0 or 1 (the index of the preferred summary)")
    worker = frame["worker"].to_numpy(dtype=object)
    fail(
        frame,
        np.array([not isinstance(w, str) or not w for w in worker]),
        "worker",
        "must be a non-empty string",
    )

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) and value.strip() else None

    template = PROMPT_FORMATS[prompt_format]
    posts = [text(i.get("post")) for i in info]
    prompts = [
        None
        if p is None
        else template.format(post=p, title=i.get("title") or "", subreddit=i.get("subreddit") or "")
        for p, i in zip(posts, info, strict=True)
    ]
    return pd.DataFrame(
        {
            "worker": worker,
            "prompt": prompts,
            "text_0": [text(s[0].get("text")) for s in summaries],
            "text_1": [text(s[1].get("text")) for s in summaries],
            "policy_0": [str(s[0].get("policy") or "") for s in summaries],
            "policy_1": [str(s[1].get("policy") or "") for s in summaries],
            "choice": choice.astype(np.int64),
            "post_id": [str(i.get("id") or "") for i in info],
            "batch": frame["batch"].astype(str).to_numpy() if "batch" in frame else [""] * n,
            "record_split": frame["split"].astype(str).to_numpy() if "split" in frame else [""] * n,
        }
    )


def _valid(parsed: pd.DataFrame, skipped: dict[str, int]) -> pd.DataFrame:
    """Drop (and count) records without a post or a summary text."""
    no_post = parsed["prompt"].isna()
    no_text = ~no_post & (parsed["text_0"].isna() | parsed["text_1"].isna())
    skipped["no_post"] = skipped.get("no_post", 0) + int(no_post.sum())
    skipped["missing_summary"] = skipped.get("missing_summary", 0) + int(no_text.sum())
    return parsed[~(no_post | no_text)]


def _check_options(prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")


# ========================================================================================================
# the recipes
# ========================================================================================================
def summarize_comparisons(source: Source, *, prompt_format: str = "tldr") -> HubData:
    """Every comparison as a row of its worker, per hub split."""
    _check_options(prompt_format)
    skipped: dict[str, int] = {}
    parts, counts = {}, {}
    for split in sorted(source.tables):
        parsed = _parse(source.tables[split], prompt_format)
        counts[f"{split}_records"] = len(parsed)
        valid = _valid(parsed, skipped)
        same = (valid["text_0"] == valid["text_1"]).to_numpy()
        skipped["same_text"] = skipped.get("same_text", 0) + int(same.sum())
        valid = valid[~same]
        first = (valid["choice"] == 0).to_numpy()
        parts[split] = pd.DataFrame(
            {
                "user_id": valid["worker"].to_numpy(),
                "prompt": valid["prompt"].to_numpy(),
                "chosen": np.where(first, valid["text_0"], valid["text_1"]),
                "rejected": np.where(first, valid["text_1"], valid["text_0"]),
                "post_id": valid["post_id"].to_numpy(),
                "batch": valid["batch"].to_numpy(),
                "chosen_policy": np.where(first, valid["policy_0"], valid["policy_1"]),
                "rejected_policy": np.where(first, valid["policy_1"], valid["policy_0"]),
            }
        )
    users = _user_table(parts)
    return HubData(
        name="summarize",
        card=CARD,
        parts=parts,
        users=users,
        origin=source.origin,
        options={"prompt_format": prompt_format, "template": PROMPT_FORMATS[prompt_format]},
        skipped=skipped,
        counts=counts,
        files=source.files,
    )


def summarize_length(
    source: Source,
    *,
    n_seen: int = 10,
    minority_ranks: tuple[int, ...] = (3, 4, 5),
    unseen_min_pairs: int = 100,
    unseen_longer: float = 0.7,
    seed: int = 0,
    prompt_format: str = "post",
) -> HubData:
    """The PAL/P-DPO length-preference variant (module docstring): parts train, test (seen) and unseen."""
    _check_options(prompt_format)
    if not 0 <= unseen_longer <= 1:
        raise ValueError(f"unseen_longer must be in [0, 1], got {unseen_longer}")
    if any(r < 0 or r >= n_seen for r in minority_ranks):
        raise ValueError(f"minority_ranks must be in 0..{n_seen - 1}, got {minority_ranks}")
    for split in ("train", "validation"):
        if split not in source.tables:
            raise DataError(f"summarize-length needs the {split} split (found: {', '.join(source.tables)})")
    skipped: dict[str, int] = {}
    selected = {}
    for split in ("train", "validation"):
        parsed = _parse(source.tables[split], prompt_format)
        sup = [("sup" in p and "ppo" not in p) for p in parsed["policy_0"]]
        sup = np.asarray(sup) & np.asarray([("sup" in p and "ppo" not in p) for p in parsed["policy_1"]])
        skipped[f"{split}_not_sup_vs_sup"] = int((~sup).sum())
        selected[split] = parsed[sup]
    # ranks by comparisons in the selected train split (PAL counts before dropping missing texts); ties by id
    counts = selected["train"]["worker"].value_counts()
    ranking = sorted(counts.index, key=lambda w: (-counts[w], w))[:n_seen]
    if len(ranking) < n_seen:
        raise DataError(f"summarize-length: only {len(ranking)} workers in the train split, {n_seen} needed")
    minority = {ranking[r] for r in minority_ranks}
    seen = {w: ("shorter" if w in minority else "longer") for w in ranking}
    train = _valid(selected["train"][selected["train"]["worker"].isin(seen)], skipped)
    skipped["train_unseen_workers"] = int((~selected["train"]["worker"].isin(seen)).sum())
    validation = _valid(selected["validation"], skipped)
    test = validation[validation["worker"].isin(seen)]
    # unseen: the other workers with >= unseen_min_pairs valid comparisons (App. D.3: "no missing values")
    rest = validation[~validation["worker"].isin(seen)]
    pairs = rest["worker"].value_counts()
    unseen_ids = sorted(w for w, c in pairs.items() if c >= unseen_min_pairs)
    skipped["validation_below_min_pairs"] = int((~rest["worker"].isin(unseen_ids)).sum())
    order = np.random.default_rng(seed).permutation(len(unseen_ids))
    n_longer = int(np.floor(unseen_longer * len(unseen_ids) + 0.5))
    unseen = {unseen_ids[i]: ("longer" if k < n_longer else "shorter") for k, i in enumerate(order)}
    parts = {}
    for name, part, groups in (
        ("train", train, seen),
        ("test", test, seen),
        ("unseen", rest[rest["worker"].isin(unseen)], unseen),
    ):
        parts[name] = _relabel(part, groups, skipped, name)
    users = _user_table(parts)
    users["prefers"] = users["user_id"].map({**seen, **unseen})
    users["seen"] = users["user_id"].isin(seen)
    users["rank"] = users["user_id"].map({w: r for r, w in enumerate(ranking)}).astype("Int64")
    return HubData(
        name="summarize-length",
        card=CARD,
        parts=parts,
        users=users,
        origin=source.origin,
        options={
            "n_seen": n_seen,
            "minority_ranks": list(minority_ranks),
            "unseen_min_pairs": unseen_min_pairs,
            "unseen_longer": unseen_longer,
            "seed": seed,
            "prompt_format": prompt_format,
            "template": PROMPT_FORMATS[prompt_format],
            "construction": LENGTH_SOURCE,
        },
        skipped=skipped,
        counts={
            "seen_workers": ranking,
            "minority_workers": [ranking[r] for r in minority_ranks],
            "unseen_workers": len(unseen),
            "unseen_longer": sum(g == "longer" for g in unseen.values()),
            "human_label_agrees": {n: int(p["human_agrees"].sum()) for n, p in parts.items()},
        },
        files=source.files,
        notes=(
            "length = number of characters of the summary text (PAL's code: len(text))",
            "seen workers are ranked by comparisons in the selected train split, ties broken by worker id",
            "unseen workers are assigned with numpy.random.default_rng(seed); PAL's released code fixes one "
            "such assignment, so the workers in each group differ while the proportions match",
        ),
    )


def _relabel(part: pd.DataFrame, groups: dict[str, str], skipped: dict[str, int], name: str) -> pd.DataFrame:
    len_0 = part["text_0"].str.len().to_numpy()
    len_1 = part["text_1"].str.len().to_numpy()
    equal = len_0 == len_1
    skipped[f"{name}_equal_length"] = int(equal.sum())
    part, len_0, len_1 = part[~equal], len_0[~equal], len_1[~equal]
    longer = part["worker"].map(groups).to_numpy() == "longer"
    first = np.where(longer, len_0 > len_1, len_0 < len_1)
    return pd.DataFrame(
        {
            "user_id": part["worker"].to_numpy(),
            "prompt": part["prompt"].to_numpy(),
            "chosen": np.where(first, part["text_0"], part["text_1"]),
            "rejected": np.where(first, part["text_1"], part["text_0"]),
            "prefers": np.where(longer, "longer", "shorter"),
            "human_agrees": first == (part["choice"].to_numpy() == 0),
            "post_id": part["post_id"].to_numpy(),
        }
    )


def _user_table(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    ids = pd.unique(pd.concat([p["user_id"] for p in parts.values()], ignore_index=True))
    return with_row_counts(pd.DataFrame({"user_id": ids}), parts)
