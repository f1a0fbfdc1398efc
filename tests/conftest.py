import os
import zlib

import numpy as np
import pytest
import torch

from pluralign.datasets.synthetic import make_synthetic

# Tests share 2 cores with other work: one thread is both faster and deterministic here.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def small():
    """Small synthetic PAL-A data with validation and unseen users (test_training, test_adaptation)."""
    return make_synthetic(
        model="pal_a",
        n_users=20,
        n_train=40,
        n_val=20,
        n_test=20,
        n_prototypes=2,
        seed=4,
        n_unseen_users=6,
        n_unseen_per_user=30,
    )


class HashEncoder:
    """Any text -> the sum of its words' seeded random vectors (8-d): for completions a tiny LM invents."""

    id = "hash-words-8"
    dim = 8

    def encode(self, texts, *, batch_size=64, show_progress=False):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.split():
                out[i] += np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)
        return out
