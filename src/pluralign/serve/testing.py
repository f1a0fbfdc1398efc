"""A small PAL-B checkpoint with a precomputed encoder, for tests, the load benchmark and trying the service.

Texts are the synthetic names ``item-<i>`` (responses) and ``ctx-<i>`` (prompts); no sentence-transformers
model is needed. ``serving(app)`` runs an app with uvicorn on a free loopback port for the time of a block.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def make_demo_model(
    directory: str | Path,
    *,
    dim: int = 8,
    n_users: int = 20,
    n_train: int = 30,
    n_contexts: int = 30,
    n_prototypes: int = 2,
    epochs: int = 3,
    model_dim: int | None = None,
    seed: int = 0,
) -> Path:
    """Train a tiny PALB on synthetic PAL-B data and save it to ``directory/model``; returns that path.

    ``dim`` is the dimension of the data's vectors, ``model_dim`` the model's latent dimension (default:
    ``dim``). The item and context vectors go to ``directory/vectors.npz``, which the checkpoint names as
    its encoder.
    """
    from pluralign.datasets.synthetic import make_synthetic
    from pluralign.encoders.precomputed import save_vectors
    from pluralign.estimator import PALB

    directory = Path(directory)
    data = make_synthetic(
        model="pal_b",
        dim=dim,
        n_prototypes=n_prototypes,
        n_users=n_users,
        n_train=n_train,
        n_test=5,
        n_contexts=n_contexts,
        seed=seed,
    )
    train = data.train
    keys = np.asarray([*train.items, *train.contexts], dtype=str)
    vectors = np.concatenate([train.item_vectors, train.context_vectors])
    path = save_vectors(directory / "vectors.npz", keys, vectors)
    est = PALB(
        n_prototypes=n_prototypes,
        dim=model_dim or dim,
        epochs=epochs,
        encoder=str(path.resolve()),
        seed=seed,
    )
    est.fit(train)
    return est.save(directory / "model")


@contextlib.contextmanager
def serving(app: Any, *, start_timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a daemon thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    try:
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(start_timeout)
        sock.close()
