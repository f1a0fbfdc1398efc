import os

import torch

# Tests share 2 cores with other work: one thread is both faster and deterministic here.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
