"""PAL's precomputed Pick-a-Pic embeddings (PAL paper Sec. 3.2 and App. D.5: PAL-B-Tiny trained on frozen
CLIP-H/14 or PickScore embeddings of Pick-a-Pic v1/v2 prompts and image pairs, ties removed) as pluralign's
embedded format, so training skips the encoder.

**Upstream is pickle-only.** The PAL README links ``ramya-ml/pickapic-embeds`` (``embeddings/*.zip``, e.g.
``pickapic_v2-openclip-h14_default.zip``): one joblib file per comparison holding
``((user_id, prompt_vector, (left_vector, right_vector)), y), ranking_id``, with split lists as torch
``.pt`` files. Both formats are read by unpickling, which can run code, so pluralign never opens them (a
``--from`` folder holding them is refused). Convert them once, in an environment where you trust the files,
into this documented safe layout (docs/datasets/hub.md has the conversion script):

- ``pairs.parquet`` (or ``pairs.jsonl``): ``user_id``, ``prompt_id``, ``left_id``, ``right_id``, ``y``
  (-1: the left image preferred, 1: the right one, 0: a tie, skipped and counted; PAL's convention) and
  optionally ``split`` (default ``train``);
- ``prompts.npz`` and ``images.npz`` (or ``.parquet``): vector tables, arrays ``keys`` (unicode ids) and
  ``vectors`` [n, D], read with ``allow_pickle=False`` (the ``--encoder`` vector format of
  :mod:`pluralign.encoders.precomputed`).

**Output** per split: ``<split>.arrays/`` (``pluralign.data.arrays.load_arrays``: index arrays plus item and
context vectors) and ``<split>.jsonl`` rows whose texts are the ids (``prompt:<id>``, ``image:<id>``), with
``vectors.npz`` for ``--encoder`` when prompt and image vectors have the same dimension (CLIP-H/14: 1024).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pluralign.data.comparisons import PreferenceData
from pluralign.datasets.hub_data import Card, HubData, with_row_counts
from pluralign.datasets.hub_files import PICKLE_SUFFIXES, Source, fail, read_table_file, require_columns
from pluralign.encoders.precomputed import PrecomputedEncoder
from pluralign.errors import DataError

__all__ = ["CARD", "load_pickapic", "pickapic_pairs"]

CARD = Card(
    repo="ramya-ml/pickapic-embeds",
    url="https://huggingface.co/datasets/ramya-ml/pickapic-embeds",
    license="MIT (card of ramya-ml/pickapic-embeds); the underlying Pick-a-Pic data "
    "(yuvalkirstain/pickapic_v2) is MIT-licensed",
    attribution="Embeddings: PAL, Chen et al. (ICLR 2025), "
    "https://github.com/RamyaLab/pluralistic-alignment; data: Pick-a-Pic, Kirstain et al. (NeurIPS 2023)",
    citation="Chen, D., Chen, Y., Rege, A., Wang, Z., & Vinayak, R. K. (2025). PAL: Sample-Efficient "
    "Personalized Reward Modeling for Pluralistic Alignment. ICLR. arXiv:2406.08469",
)
PAIRS = ("pairs.parquet", "pairs.jsonl")
CONVERT = "convert them once into pairs.parquet + prompts.npz + images.npz (docs/datasets/hub.md, pickapic)"


def load_pickapic(source_dir: str | Path | None = None, *, dataset: str = "pickapic") -> Source:
    """The pairs table of a converted copy (see the module docstring); vectors are read by the recipe."""
    if source_dir is None:
        raise DataError(
            f"{dataset}: PAL's released embeddings ({CARD.url}) are pickle files, which pluralign never "
            f"loads, from the hub or anywhere: {CONVERT} and pass --from DIR"
        )
    root = Path(source_dir).expanduser()
    if not root.is_dir():
        raise DataError("no such directory (a converted copy of PAL's Pick-a-Pic embeddings)", path=root)
    pickled = sorted(p for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise DataError(
            f"{pickled[0].suffix} files are read by unpickling, which can run code; pluralign never opens "
            f"them: {CONVERT}",
            path=pickled[0],
        )
    found = [root / name for name in PAIRS if (root / name).is_file()]
    if not found:
        raise DataError(f"no {' or '.join(PAIRS)} here: {CONVERT}", path=root)
    frame = read_table_file(found[0])
    return Source({"pairs": frame}, f"local:{root}", (str(found[0]),))


def _vectors(root: Path, name: str) -> PrecomputedEncoder:
    for suffix in (".npz", ".parquet"):
        if (root / f"{name}{suffix}").is_file():
            return PrecomputedEncoder.from_file(root / f"{name}{suffix}")
    raise DataError(f"no {name}.npz or {name}.parquet (the {name[:-1]} vectors): {CONVERT}", path=root)


def pickapic_pairs(source: Source) -> HubData:
    """The converted pairs with their vectors as embedded PreferenceData per split."""
    root = Path(source.origin.removeprefix("local:"))
    frame = source.tables["pairs"].reset_index(drop=True)
    require_columns(frame, ("user_id", "prompt_id", "left_id", "right_id", "y"), dataset="pickapic")
    ids = {
        c: frame[c].astype(str).to_numpy(dtype=object)
        for c in ("user_id", "prompt_id", "left_id", "right_id")
    }
    y = pd.to_numeric(frame["y"], errors="coerce").to_numpy(dtype=float)
    fail(frame, ~np.isin(y, (-1, 0, 1)), "y", "must be -1 (left preferred), 1 (right preferred) or 0 (tie)")
    split = (
        frame["split"].astype(str).to_numpy(dtype=object)
        if "split" in frame
        else np.full(len(frame), "train")
    )
    prompts, images = _vectors(root, "prompts"), _vectors(root, "images")
    for column, table in (("prompt_id", prompts), ("left_id", images), ("right_id", images)):
        known = pd.Index(table.keys).get_indexer(pd.Index(ids[column])) >= 0
        fail(frame, ~known, column, f"unknown id (not in {Path(str(table.path)).name})")
    tie = y == 0
    same = ~tie & (ids["left_id"] == ids["right_id"])
    keep = ~(tie | same)
    left_wins = y < 0
    chosen = np.where(left_wins, ids["left_id"], ids["right_id"])
    rejected = np.where(left_wins, ids["right_id"], ids["left_id"])
    rows = pd.DataFrame(
        {
            "user_id": ids["user_id"],
            "prompt": "prompt:" + pd.Series(ids["prompt_id"]),
            "chosen": "image:" + pd.Series(chosen),
            "rejected": "image:" + pd.Series(rejected),
            "split": split,
        }
    )[keep]
    parts, arrays = {}, {}
    for name in sorted(pd.unique(rows["split"]), key=lambda s: (s != "train", s)):
        part = rows[rows["split"] == name].drop(columns="split").reset_index(drop=True)
        parts[name] = part
        data = PreferenceData.from_frame(part, source=f"pickapic:{name}")
        context_vectors = prompts.encode([c.removeprefix("prompt:") for c in data.contexts])
        item_vectors = images.encode([i.removeprefix("image:") for i in data.items])
        arrays[name] = data.with_vectors(item_vectors, context_vectors)
    vectors = None
    if prompts.dim == images.dim:
        keys = np.concatenate(
            [np.char.add("prompt:", prompts.keys.astype(str)), np.char.add("image:", images.keys.astype(str))]
        )
        vectors = (keys, np.concatenate([prompts.vectors, images.vectors]))
    users = with_row_counts(pd.DataFrame({"user_id": pd.unique(rows["user_id"])}), parts)
    return HubData(
        name="pickapic",
        card=CARD,
        parts=parts,
        users=users,
        origin=source.origin,
        options={},
        skipped={"ties": int(tie.sum()), "same_image": int(same.sum())},
        counts={
            "pairs": len(frame),
            "prompt_vectors": len(prompts),
            "image_vectors": len(images),
            "prompt_dim": prompts.dim,
            "image_dim": images.dim,
        },
        files=(*source.files, str(prompts.path), str(images.path)),
        notes=()
        if vectors is not None
        else ("prompt and image dims differ: no vectors.npz, use the .arrays",),
        arrays=arrays,
        vectors=vectors,
    )
