r"""The served artifact, compressed: the serving arrays re-encoded in the compact format.

:func:`compact_serving_arrays` turns the plain serving arrays (``format_version`` 1, what
:func:`~mm_pipeline.registry.pyfunc.export_serving_arrays` builds: float32 tables, int64 indices, hex
user keys) into the compact format (``format_version`` 2) that
:class:`~mm_pipeline.registry.pyfunc.RecommenderPyfunc` serves directly; the format itself is described
next to its reader in :mod:`mm_pipeline.registry.pyfunc`. What changes:

* **lossless**: every integer array in the narrowest type that holds it (``uint16`` item indices below
  65,536 items, ``int32`` offsets), user keys as their raw 32-byte digests instead of 64 hex characters
  stored as 256 bytes of UTF-32, the already-seen items shared with the user history when they are the
  same entries (item-item models), score parts (explanations) with narrow indices and fp16 values;
* **lossy**, by ``compression`` (``fp32_compact``: none, the lossless part alone): the float tables as
  ``fp16``, or ``int8`` / ``int4`` codes with one
  scale per row (symmetric: :math:`q = \mathrm{round}(x / s)`, :math:`s = \max_c |x_{rc}| / L`,
  :math:`L = 127` or :math:`7`, so :math:`|x - q s| \le s / 2` and exact zeros stay zero; the scale is
  stored as fp16, rounded up, or as float32 when fp16 cannot hold it). ``int4_outliers`` is mixed
  precision: int4 rows whose largest entries (:data:`OUTLIER_SHARE` of each row, at least one) are kept
  in fp16 beside the codes, so the row's scale, and its rounding step, covers the rest only (an item-item
  row is a few strong neighbours and many weak ones: plain int4 rounds most of the weak ones to zero).
  The user history weights stay fp16 (data, not weights). A block that is mostly zeros (an item k-NN
  core) is stored as CSR when that is smaller (int8 codes under ``int4_outliers``).

:func:`serving_recommender` decodes any serving arrays back into an
:class:`~mm_pipeline.recommend.base.EmbeddingRecommender` whose scores are the served ones, so the
usual evaluation measures what compression costs.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.registry.pyfunc import (
    BLOCK_CODEC,
    BLOCK_CODECS,
    COMPACT_FORMAT_VERSION,
    COMPRESSIONS,
    KEY_DIGEST_BYTES,
    QUANTIZED_LEVELS,
    plain_serving_arrays,
)

_FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal fp16: below it fp16 loses precision
_FP16_MAX = float(np.finfo(np.float16).max)
BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
# int4_outliers keeps this share of each row's entries (the largest in magnitude, at least one) in fp16.
OUTLIER_SHARE = 1 / 256


def index_dtype(max_value: int) -> np.dtype:
    """The narrowest of ``uint16``, ``int32``, ``int64`` that holds every value in ``[0, max_value]``."""
    if max_value < 2**16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32) if max_value < 2**31 else np.dtype(np.int64)


def _indices(values: np.ndarray, bound: int) -> np.ndarray:
    return np.asarray(values).astype(index_dtype(max(int(bound), 0)))


def float_values(values: np.ndarray) -> np.ndarray:
    """``values`` as fp16 when fp16 holds every nonzero one at full precision (normal range), else float32."""
    values = np.asarray(values, dtype=np.float32)
    magnitude = np.abs(values[values != 0])
    if magnitude.size == 0 or (magnitude.min() >= _FP16_TINY and magnitude.max() <= _FP16_MAX):
        return values.astype(np.float16)
    return values


def _row_scales(absmax: np.ndarray, levels: int) -> np.ndarray:
    """One scale per row, ``absmax / levels``: fp16 rounded *up* (so no code leaves ``[-levels, levels]``)
    when fp16 holds every nonzero scale in its normal range, else float32."""
    scale = np.asarray(absmax, dtype=np.float64) / levels
    nonzero = scale[scale > 0]
    if nonzero.size == 0 or (nonzero.min() >= _FP16_TINY and nonzero.max() <= _FP16_MAX / 2):
        half = scale.astype(np.float16)
        low = half.astype(np.float64) < scale
        half[low] = np.nextafter(half[low], np.float16(np.inf))
        return half
    return scale.astype(np.float32)


def _codes(values: np.ndarray, scale: np.ndarray, levels: int, block: int = 1 << 20) -> np.ndarray:
    """``clip(rint(values / scale), -levels, levels)`` as int8 (``scale`` broadcast against ``values``; a zero
    scale reads as 1), in float32, about ``block`` entries at a time: float64 temporaries of a 12k x 12k
    table were most of the cost of compressing it."""
    safe = np.where(scale > 0, scale, 1).astype(np.float32)
    safe = np.broadcast_to(safe, np.broadcast_shapes(safe.shape, values.shape[:1] + (1,) * (values.ndim - 1)))
    out = np.empty(values.shape, dtype=np.int8)
    step = max(1, block // max(1, int(np.prod(values.shape[1:]))))
    for start in range(0, values.shape[0], step):
        stop = start + step
        quotient = np.asarray(values[start:stop], dtype=np.float32) / safe[start:stop]
        np.rint(quotient, out=quotient)
        np.clip(quotient, -levels, levels, out=quotient)
        out[start:stop] = quotient
    return out


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Signed int4 codes (``[-8, 7]``) packed two to a byte along the last axis, ``code + 8``, low nibble
    first (an odd last axis is padded with a zero code); the inverse of
    :func:`~mm_pipeline.registry.pyfunc.unpack_int4`."""
    codes = np.asarray(codes)
    if codes.size and (codes.min() < -8 or codes.max() > 7):
        raise ValueError("int4 codes must lie in [-8, 7]")
    nibbles = (codes.astype(np.int16) + 8).astype(np.uint8)
    if nibbles.shape[-1] % 2:
        pad = np.full((*nibbles.shape[:-1], 1), 8, dtype=np.uint8)
        nibbles = np.concatenate([nibbles, pad], axis=-1)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def row_outliers(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rest, columns, values)``: each row's ``k`` largest-magnitude entries (``columns`` and their fp16
    ``values``, ``[n_rows, k]``, columns ascending) and the matrix with them set to zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    k = min(int(k), matrix.shape[1])
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    columns = np.sort(np.argpartition(-np.abs(matrix), k - 1, axis=1)[:, :k], axis=1)
    values = np.take_along_axis(matrix, columns, axis=1)
    values = values.astype(np.float16) if np.abs(values).max(initial=0.0) <= _FP16_MAX else values
    rest = matrix.copy()
    # What fp16 does not hold exactly stays in the rest, to be quantized with it.
    np.put_along_axis(rest, columns, np.take_along_axis(matrix, columns, axis=1) - values.astype(np.float32), 1)
    return rest, columns.astype(index_dtype(matrix.shape[1])), values


def outlier_count(width: int, share: float = OUTLIER_SHARE) -> int:
    """How many outliers a row of ``width`` entries keeps: ``ceil(share * width)``, at least one."""
    return max(1, int(np.ceil(share * width)))


def quantize_rows(matrix: np.ndarray, compression: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(codes, scale)`` of a float matrix: fp16 values (no scale), or int8 / packed int4 codes and one
    scale per row (see the module doc)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"quantize_rows needs a 2-D matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("cannot quantize NaN or infinite values")
    if compression == "fp32":
        return matrix, None
    if compression == "fp16":
        if matrix.size and np.abs(matrix).max() > _FP16_MAX:
            raise ValueError("values above the fp16 range: use int8 or int4 (scaled per row)")
        return matrix.astype(np.float16), None
    if compression not in QUANTIZED_LEVELS:
        raise ValueError(f"compression must be one of {BLOCK_CODECS}, got {compression!r}")
    levels = QUANTIZED_LEVELS[compression]
    absmax = np.abs(matrix).max(axis=1) if matrix.shape[1] else np.zeros(matrix.shape[0], np.float32)
    scale = _row_scales(absmax, levels)
    codes = _codes(matrix, scale[:, None], levels)
    return (pack_int4(codes) if compression == "int4" else codes), scale


def _quantize_stream(
    values: np.ndarray, rows: np.ndarray, n_rows: int, compression: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """The stored entries of a CSR block (row ``rows[e]`` for entry ``e``), one scale per row."""
    if compression in ("fp32", "fp16"):
        return quantize_rows(values[None, :], compression)[0][0], None
    levels = QUANTIZED_LEVELS[compression]
    absmax = np.zeros(n_rows, dtype=np.float32)
    np.maximum.at(absmax, rows, np.abs(values))
    scale = _row_scales(absmax, levels)
    codes = _codes(values, scale[rows], levels)
    return (pack_int4(codes) if compression == "int4" else codes), scale


def _encode_block(out: dict, name: str, matrix: np.ndarray, compression: str, allow_sparse: bool) -> None:
    """``name_codes`` (+ ``name_scale``) of a dense block, or, when smaller, its CSR form
    (``name_indptr``, ``name_indices``, ``name_codes``, ``name_scale``). ``int4_outliers``: a dense block
    is int4 with each row's outliers (``name_outlier_columns`` / ``name_outlier_values``), a CSR block
    int8 (its ``name_codec`` says so)."""
    n_rows, width = matrix.shape
    outliers = compression == "int4_outliers"
    dense_codec = BLOCK_CODEC.get(compression, compression)
    if allow_sparse:
        sparse_codec = "int8" if outliers else dense_codec
        nnz = int(np.count_nonzero(matrix))
        dense = n_rows * np.ceil(width * BITS[dense_codec] / 8)
        if outliers:
            dense += n_rows * outlier_count(width) * (2 + index_dtype(width).itemsize)
        sparse_bytes = nnz * (BITS[sparse_codec] / 8 + index_dtype(width).itemsize) + (n_rows + 1) * 4
        if sparse_bytes < dense:
            compression = sparse_codec
            if outliers:
                out[f"{name}_codec"] = np.asarray(sparse_codec)
            csr = sp.csr_matrix(matrix)
            csr.sum_duplicates()
            csr.sort_indices()
            row_of = np.repeat(np.arange(n_rows), np.diff(csr.indptr))
            codes, scale = _quantize_stream(csr.data.astype(np.float32), row_of, n_rows, compression)
            out[f"{name}_indptr"] = _indices(csr.indptr, csr.nnz)
            out[f"{name}_indices"] = _indices(csr.indices, width)
            out[f"{name}_codes"] = codes
            if scale is not None:
                out[f"{name}_scale"] = scale
            return
    if outliers:
        matrix, columns, values = row_outliers(matrix, outlier_count(width))
        out[f"{name}_outlier_columns"], out[f"{name}_outlier_values"] = columns, values
    codes, scale = quantize_rows(matrix, dense_codec)
    out[f"{name}_codes"] = codes
    if scale is not None:
        out[f"{name}_scale"] = scale


def _history_width(arrays: Mapping[str, np.ndarray], width: int) -> int:
    """How many leading user-table columns are a sparse history: the score parts say so (the hybrid);
    otherwise all of a sparse table that is mostly empty (EASE, item k-NN), none of a dense one."""
    if "user_embeddings" in arrays:
        return 0
    if "parts_history_width" in arrays:
        return int(np.asarray(arrays["parts_history_width"]))
    n_users = np.asarray(arrays["user_indptr"]).size - 1
    density = np.asarray(arrays["user_indices"]).size / max(n_users * width, 1)
    return width if density < 0.5 else 0


def compact_serving_arrays(arrays: Mapping[str, np.ndarray], compression: str) -> dict[str, np.ndarray]:
    """The plain serving ``arrays`` in the compact format with its tables stored as ``compression``
    (``fp32``: the plain arrays as they are). See the module doc; the served scores change only by the
    rounding of the tables (fp16 weights of the history included)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    version = int(np.asarray(arrays["format_version"])) if "format_version" in arrays else 1
    if version != 1:
        raise ValueError(f"compact_serving_arrays needs plain serving arrays (format_version 1), got {version}")
    if compression == "fp32":
        return dict(arrays)
    items = np.asarray(arrays["item_embeddings"], dtype=np.float32)
    n_items, width = items.shape
    keys = np.asarray(arrays["user_keys"]).astype(str)
    n_users = keys.size
    h = _history_width(arrays, width)
    lossless = compression == "fp32_compact"
    out: dict[str, Any] = {
        "format_version": np.asarray(COMPACT_FORMAT_VERSION, dtype=np.int64),
        "compression": np.asarray(compression),
        "table_shape": np.asarray([n_users, n_items, width], dtype=np.int64),
        "history_width": np.asarray(h, dtype=np.int64),
    }
    if "user_embeddings" in arrays:
        dense_users = np.asarray(arrays["user_embeddings"], dtype=np.float32)
    else:
        indptr = np.asarray(arrays["user_indptr"], dtype=np.int64)
        indices = np.asarray(arrays["user_indices"], dtype=np.int64)
        values = np.asarray(arrays["user_values"], dtype=np.float32)
        row_of = np.repeat(np.arange(n_users), np.diff(indptr))
        history = indices < h
        counts = np.bincount(row_of[history], minlength=n_users)
        out["history_indptr"] = _indices(np.concatenate([[0], np.cumsum(counts)]), int(history.sum()))
        out["history_indices"] = _indices(indices[history], h)
        out["history_values"] = values[history] if lossless else float_values(values[history])
        dense_users = np.zeros((n_users, width - h), dtype=np.float32)
        dense_users[row_of[~history], indices[~history] - h] = values[~history]
    if h:
        _encode_block(out, "item_history", np.ascontiguousarray(items[:, :h].T), compression, allow_sparse=True)
    if width - h:
        _encode_block(out, "user_dense", dense_users, compression, allow_sparse=False)
        _encode_block(out, "item_dense", items[:, h:], compression, allow_sparse=False)

    digests = np.frombuffer(bytes.fromhex("".join(keys.tolist())), dtype=np.uint8)
    out["user_key_digests"] = digests.reshape(n_users, KEY_DIGEST_BYTES)
    for name in ("item_ids", "key_check", "max_k", "max_rows"):
        if name in arrays:
            out[name] = np.asarray(arrays[name])
    out["popular_items"] = _indices(arrays["popular_items"], n_items)
    if "seen_indptr" in arrays:
        seen_indptr = np.asarray(arrays["seen_indptr"], dtype=np.int64)
        seen_indices = np.asarray(arrays["seen_indices"], dtype=np.int64)
        same = (
            h == n_items
            and np.array_equal(seen_indptr, np.asarray(out["history_indptr"], dtype=np.int64))
            and np.array_equal(seen_indices, np.asarray(out["history_indices"], dtype=np.int64))
        )
        if same:  # the seen items are the history's columns: stored once
            out["seen_from_history"] = np.asarray(1, dtype=np.int8)
        else:
            out["seen_indptr"] = _indices(seen_indptr, seen_indices.size)
            out["seen_indices"] = _indices(seen_indices, n_items)
    for name, value in arrays.items():
        if not name.startswith("parts_"):
            continue
        value = np.asarray(value)
        if name.endswith("_values"):
            out[name] = value.astype(np.float32) if lossless else float_values(value)
        elif name.endswith(("_indptr", "_indices")):
            out[name] = _indices(value, max(int(value.max()) if value.size else 0, 0))
        else:
            out[name] = value
    # Explanations' interest space (aligned per-modality item embeddings, unit rows): fp16 is ample for
    # cosines, whatever the tables' codec; the rest of it (modalities, flags, the null) as it is.
    for name, value in arrays.items():
        if name.startswith("interest_"):
            value = np.asarray(value)
            out[name] = value.astype(np.float16) if name == "interest_embeddings" and not lossless else value
    return out


def serving_recommender(arrays: Mapping[str, np.ndarray], name: str, info: dict | None = None) -> EmbeddingRecommender:
    """The model the serving ``arrays`` (plain or compact) serve: its tables decoded to float32, the
    score parts kept. Its ``score`` equals the pyfunc's up to float summation order."""
    plain = plain_serving_arrays(arrays)
    if "user_embeddings" in plain:
        tables = {"user_embeddings": plain["user_embeddings"]}
    else:
        width = np.asarray(plain["item_embeddings"]).shape[1]
        tables = {
            "user_crow_indices": plain["user_indptr"],
            "user_col_indices": plain["user_indices"],
            "user_values": plain["user_values"],
            "user_shape": np.asarray([np.asarray(plain["user_indptr"]).size - 1, width], dtype=np.int64),
        }
    parts = {k: v for k, v in plain.items() if k.startswith("parts_")}
    return EmbeddingRecommender.from_arrays(
        name, {**tables, "item_embeddings": plain["item_embeddings"], **parts}, info=info
    )


def table_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The serving arrays without what identifies users and items (keys, ids, key check): what
    :func:`serving_recommender` needs, e.g. to keep a variant in an asset."""
    private = {"user_keys", "user_key_digests", "item_ids", "key_check"}
    return {k: np.asarray(v) for k, v in arrays.items() if k not in private}


class _ByteCounter(io.RawIOBase):
    """A seekable sink that keeps nothing: how many bytes a writer would have left in a file."""

    def __init__(self) -> None:
        super().__init__()
        self.position = self.size = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.position += n
        self.size = max(self.size, self.position)
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position


def artifact_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of the ``.npz`` the arrays are logged as (``np.savez``, as ``log_recommender`` writes it): the
    archive is written to a counting sink, so the size is exact and no copy of it is held (a plain
    artifact of a 20k-item item-item model is 1.7 GB)."""
    counter = _ByteCounter()
    np.savez(counter, **arrays)
    return counter.size


def component_bytes(arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Bytes of each array's data (``nbytes``), largest first: what the artifact is made of."""
    sizes = {name: int(np.asarray(value).nbytes) for name, value in arrays.items()}
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))
