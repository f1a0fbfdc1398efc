import os

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
