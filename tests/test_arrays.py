"""PreferenceData as memory-mapped .npy arrays: round trip, training on the mapped arrays, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pluralign import PALB
from pluralign.data.arrays import load_arrays, save_arrays
from pluralign.datasets.synthetic import make_synthetic
from pluralign.errors import DataError


@pytest.fixture(scope="module")
def data():
    return make_synthetic(model="pal_b", n_users=12, n_train=30, n_test=5, n_prototypes=2, seed=0).train


def test_round_trip_maps_the_arrays(data, tmp_path):
    save_arrays(data, tmp_path)
    mapped = load_arrays(tmp_path)
    assert isinstance(mapped.context, np.memmap) and isinstance(mapped.item_vectors, np.memmap)
    for name in ("user", "context", "chosen", "rejected", "item_vectors", "context_vectors"):
        np.testing.assert_array_equal(getattr(mapped, name), getattr(data, name))
    for name in ("user_ids", "contexts", "items"):
        assert list(getattr(mapped, name)) == [str(x) for x in getattr(data, name)]
    assert not isinstance(load_arrays(tmp_path, mmap=False).context, np.memmap)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_training_on_mapped_arrays_equals_training_in_memory(data, tmp_path):
    save_arrays(data, tmp_path)
    params = dict(n_prototypes=2, dim=4, epochs=3, batch_size=64, patience=None)
    in_memory = PALB(**params).fit(data)
    with pytest.warns(UserWarning, match="not writable"):  # torch shares the read-only mapping
        mapped = PALB(**params).fit(load_arrays(tmp_path))
    for name, value in in_memory.model_.state_dict().items():
        assert torch.equal(mapped.model_.state_dict()[name], value), name


def test_bad_directories_are_clear_errors(data, tmp_path):
    with pytest.raises(DataError, match=r"no tables\.json"):
        load_arrays(tmp_path)
    save_arrays(data, tmp_path)
    np.save(tmp_path / "chosen.npy", np.asarray(data.chosen) + len(data.items))
    with pytest.raises(DataError, match=r"chosen\.npy: indices outside 0\.\."):
        load_arrays(tmp_path)
    np.save(tmp_path / "chosen.npy", np.asarray(data.chosen, dtype=np.float64))
    with pytest.raises(DataError, match=r"chosen\.npy: dtype float64"):
        load_arrays(tmp_path)
    np.save(tmp_path / "chosen.npy", np.asarray(data.chosen)[:-1])
    with pytest.raises(DataError, match=r"rows, tables\.json says"):
        load_arrays(tmp_path)
    np.save(tmp_path / "chosen.npy", np.asarray(data.chosen))
    vectors = np.array(data.item_vectors)
    vectors[0, 0] = np.nan
    np.save(tmp_path / "item_vectors.npy", vectors)
    with pytest.raises(DataError, match="non-finite"):
        load_arrays(tmp_path)
    (tmp_path / "user.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"user\.npy: unreadable"):
        load_arrays(tmp_path)
    (tmp_path / "tables.json").write_text(
        json.dumps({"format": "other", "version": 1, "rows": 0, "user_ids": [], "contexts": [], "items": []})
    )
    with pytest.raises(DataError, match="format 'other'"):
        load_arrays(tmp_path)
