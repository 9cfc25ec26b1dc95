"""A content-addressed cache of per-item feature vectors: after items are added or edited, only those are encoded.

A vector is stored under the hash of the exact input it was computed from (a text's UTF-8 bytes), in a
folder named after the encoder's identity (the model's files and this code's version): another model,
or a new version of the encoding code, starts an empty folder, so a stale vector is never served.

Layout: ``<folder>/<chunk>.npz`` files, each written once and atomically (a temporary name, then a
rename), holding ``keys`` (the inputs' 32-hex-digit hashes) and ``vectors`` (``[n, d]`` float32). A
run that encodes new inputs adds one chunk; once there are more than ``max_chunks`` the cache merges
them into one. Several processes may read and add at once (each chunk has its own name; a chunk that
disappears while being read was merged into another). Never pickled.

What is cacheable is what depends on one item alone: the frozen text encoder's embedding of a text. The
image encoder is trained on every item's views (its features depend on all items), so it is not; decoding
and augmenting one item are cheap next to it (a few seconds for thousands of items) and run again.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

SUFFIX = ".npz"
DEFAULT_MAX_CHUNKS = 32


def input_key(text: str) -> str:
    """The cache key of one input text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def folder_identity(*parts: str, folder: str | Path | None = None) -> str:
    """A short hash of ``parts`` and, when given, of ``folder``'s files (relative path, size, modification
    time): a model folder replaced or edited gives another identity."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(f"{part}\x00".encode())
    if folder is not None:
        root = Path(folder)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(root).as_posix()}\x00{stat.st_size}\x00{stat.st_mtime_ns}\x00".encode())
    return digest.hexdigest()


class FeatureCache:
    """Vectors by input key in ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | Path, max_chunks: int = DEFAULT_MAX_CHUNKS):
        self.folder = Path(folder)
        self.max_chunks = max_chunks

    def _chunks(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.suffix == SUFFIX and not p.name.startswith("."))

    def _read(self, chunks: Sequence[Path]) -> tuple[np.ndarray, np.ndarray | None]:
        keys, vectors = [], []
        for chunk in chunks:
            try:
                with np.load(chunk, allow_pickle=False) as npz:
                    keys.append(npz["keys"])
                    vectors.append(npz["vectors"])
            except FileNotFoundError:  # merged meanwhile by another process: its vectors are in the merged chunk
                continue
            except (OSError, ValueError, KeyError):  # unreadable: ignored, those inputs are encoded again
                continue
        if not keys:
            return np.zeros(0, dtype="U32"), None
        return np.concatenate(keys), np.concatenate(vectors)

    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those of ``keys`` the cache holds."""
        stored_keys, vectors = self._read(self._chunks())
        if vectors is None:
            return {}
        wanted = set(keys)
        return {str(k): vectors[i] for i, k in enumerate(stored_keys) if k in wanted}

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` under ``keys[i]`` (one new chunk), then merge the chunks if there are too many."""
        if not len(keys):
            return
        self._write(np.asarray(keys, dtype="U32"), np.asarray(vectors, dtype=np.float32))
        chunks = self._chunks()
        if len(chunks) > self.max_chunks:
            self._merge(chunks)

    def _write(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp, path = self.folder / f".{name}.tmp", self.folder / f"{name}{SUFFIX}"
        with tmp.open("wb") as f:
            np.savez(f, keys=keys, vectors=vectors)
        os.replace(tmp, path)
        return path

    def _merge(self, chunks: Sequence[Path]) -> None:
        keys, vectors = self._read(chunks)
        if vectors is None:
            return
        keys, first = np.unique(keys, return_index=True)
        self._write(keys, vectors[first])
        for chunk in chunks:
            chunk.unlink(missing_ok=True)


def cached_vectors(
    texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], cache: FeatureCache | None
) -> tuple[np.ndarray, int]:
    """``encode(texts)`` with every text the cache holds taken from it, each other distinct text encoded
    once (one call to ``encode``) and added to it. Returns the vectors in the order of ``texts`` and how
    many of them came from the cache. ``cache=None``: everything is encoded."""
    texts = list(texts)
    if cache is None or not texts:
        return encode(texts), 0
    keys = [input_key(t) for t in texts]
    found = cache.lookup(keys)
    missing: dict[str, str] = {}
    for key, text in zip(keys, texts):
        if key not in found:
            missing.setdefault(key, text)
    if missing:
        encoded = np.asarray(encode(list(missing.values())), dtype=np.float32)
        cache.add(list(missing), encoded)
        found.update(zip(missing, encoded))
    hits = sum(key not in missing for key in keys)
    return np.ascontiguousarray(np.stack([found[k] for k in keys]).astype(np.float32)), hits
