r"""An MLflow pyfunc that serves any :class:`~mm_pipeline.recommend.base.EmbeddingRecommender`.

The logged model is :class:`RecommenderPyfunc` plus one ``.npz`` artifact (see
:func:`export_serving_arrays`). It is logged as MLflow *models-from-code*: the model directory
holds a copy of this file's source (``recommender_model.py``) with one
``set_model(RecommenderPyfunc())`` line appended, so
loading executes that plain-text file (no pickle to deserialize) and needs numpy, pandas and
MLflow, not PyTorch and not ``mm_pipeline``. **Keep this module's top-level imports to the standard
library, numpy, pandas and MLflow**; anything else is imported inside the functions that need it.

Privacy: the artifact holds no raw user identifier and no secret. Users are stored under a keyed
hash, ``HMAC-SHA256(secret, str(user_id))``; the secret is given to the server at run time
(``$MM_PIPELINE_USER_KEY_SECRET``, or a file named by ``$MM_PIPELINE_USER_KEY_SECRET_FILE``, or the
project home's ``secrets/user_key``), never written next to the model. Without the secret nobody can
test a guessed id against the stored keys, and the served model recognises no user: every request
gets the popularity fallback. The artifact keeps a short fingerprint of the secret (an HMAC of a
fixed label) so a server started with the wrong secret says so instead of silently falling back.

Requests are bounded: ``k`` and the number of rows per request have caps (stored with the model,
overridable by the server's ``$MM_PIPELINE_SERVE_MAX_K`` / ``$MM_PIPELINE_SERVE_MAX_ROWS``); a request
above them is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import logging
import os
import re
import secrets
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

if TYPE_CHECKING:
    import scipy.sparse as sp
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

    from mm_pipeline.explain.interest import InterestSpace
    from mm_pipeline.recommend.base import EmbeddingRecommender

DEFAULT_K = 10
ARTIFACT_KEY = "serving"
ARTIFACT_FILE = "serving_arrays.npz"
MODEL_CODE_FILE = "recommender_model.py"
FORMAT_VERSION = 1
EXAMPLE_USER = "example-user"
_REQUIRED_ARRAYS = ("item_embeddings", "item_ids", "user_keys", "key_check", "popular_items")
SECRET_ENV = "MM_PIPELINE_USER_KEY_SECRET"
SECRET_FILE_ENV = "MM_PIPELINE_USER_KEY_SECRET_FILE"
HOME_ENV = "MM_PIPELINE_HOME"
SECRET_HOME_FILE = ("secrets", "user_key")  # under the project home: the embedded default
MIN_SECRET_BYTES = 16
# Request caps: the defaults stored with a model, and the server-side overrides.
DEFAULT_MAX_K = 100
DEFAULT_MAX_ROWS = 1000
MAX_K_ENV = "MM_PIPELINE_SERVE_MAX_K"
MAX_ROWS_ENV = "MM_PIPELINE_SERVE_MAX_ROWS"
_log = logging.getLogger(__name__)
# A sparse user table (item-item models: the user's weighted history) is stored in CSR form.
SPARSE_USER_ARRAYS = ("user_indptr", "user_indices", "user_values")
_ALIAS = re.compile(r"^[\w\-]+$")

INPUT_SCHEMA = Schema(
    [ColSpec("string", "user_id"), ColSpec("long", "k", required=False), ColSpec("boolean", "explain", required=False)]
)
EXPLAIN_EVIDENCE = 3  # history items named per explained recommendation
OUTPUT_SCHEMA = Schema(
    [
        ColSpec("string", "user_id"),
        ColSpec("long", "rank"),
        ColSpec("string", "item_id"),
        ColSpec("double", "score"),
        ColSpec("boolean", "fallback"),
    ]
)
SIGNATURE = ModelSignature(inputs=INPUT_SCHEMA, outputs=OUTPUT_SCHEMA)


def user_key(user_id: Any, secret: bytes) -> str:
    """The key a user is stored under: ``HMAC-SHA256(secret, str(user_id))`` as hex."""
    return hmac.new(_secret_bytes(secret), str(user_id).encode("utf-8"), hashlib.sha256).hexdigest()


def secret_fingerprint(secret: bytes) -> str:
    """A short HMAC of a fixed label: tells whether a server holds the secret a model was keyed with,
    and says nothing about the secret itself."""
    return hmac.new(_secret_bytes(secret), b"mm_pipeline.user_key_check", hashlib.sha256).hexdigest()[:16]


def _secret_bytes(secret: bytes | str) -> bytes:
    value = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not isinstance(value, bytes) or len(value) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the user key secret must be at least {MIN_SECRET_BYTES} bytes (set {SECRET_ENV} or "
            f"{SECRET_FILE_ENV}; `python -c 'import secrets; print(secrets.token_hex(32))'` makes one)"
        )
    return value


def read_user_key_secret(home: str | os.PathLike | None = None, create: bool = False) -> bytes | None:
    """The user key secret: ``$MM_PIPELINE_USER_KEY_SECRET``, else the file named by
    ``$MM_PIPELINE_USER_KEY_SECRET_FILE``, else ``<home>/secrets/user_key`` (``home`` defaults to
    ``$MM_PIPELINE_HOME``). With ``create`` and no secret anywhere, a random one is written to the home's
    file, readable by its owner only (the embedded default). ``None`` when there is none."""
    return read_secret(SECRET_ENV, SECRET_FILE_ENV, SECRET_HOME_FILE, home=home, create=create)


def read_secret(
    value_env: str,
    file_env: str,
    home_file: Sequence[str],
    home: str | os.PathLike | None = None,
    create: bool = False,
) -> bytes | None:
    """A secret of the project: ``$<value_env>``, else the file named by ``$<file_env>``, else
    ``<home>/<home_file>`` (``home`` defaults to ``$MM_PIPELINE_HOME``). With ``create`` and no secret
    anywhere, a random one is written to the home's file, readable by its owner only. ``None`` when
    there is none. (:func:`read_user_key_secret` is this for the user key secret.)"""

    def checked(raw: bytes | str, where: str) -> bytes:
        try:
            return _secret_bytes(raw)
        except ValueError:
            if value_env == SECRET_ENV:
                raise
            raise ValueError(
                f"the secret in {where} must be at least {MIN_SECRET_BYTES} bytes "
                "(`python -c 'import secrets; print(secrets.token_hex(32))'` makes one)"
            ) from None

    value = os.environ.get(value_env, "")
    if value:
        return checked(value.strip(), f"${value_env}")
    named = os.environ.get(file_env, "")
    if named:
        try:
            raw = Path(named).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"{file_env}={named}: cannot read the secret ({exc})") from exc
        return checked(raw, f"{file_env}={named}")
    home = home or os.environ.get(HOME_ENV, "")
    if not home:
        return None
    path = Path(home).joinpath(*home_file)
    if path.exists():
        return checked(path.read_bytes().strip(), str(path))
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    try:  # O_EXCL: two processes creating it at once keep the first one's secret
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return checked(path.read_bytes().strip(), str(path))
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return checked(path.read_bytes().strip(), str(path))


def _cap_from_env(name: str, stored: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return stored
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r} must be a positive integer")
    return int(raw)


def _float32_table(values: Any) -> np.ndarray:
    """``values`` as float32 in either memory order: an item-item model's table is the transpose of the
    matrix it is built as, and a row-major copy of a 12k x 12k table took seconds for nothing (matrix
    products read both orders)."""
    table = np.asarray(values, dtype=np.float32)
    return table if table.flags.c_contiguous or table.flags.f_contiguous else np.ascontiguousarray(table)


def _empty_output() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.Series([], dtype=object),
            "rank": pd.Series([], dtype=np.int64),
            "item_id": pd.Series([], dtype=object),
            "score": pd.Series([], dtype=np.float64),
            "fallback": pd.Series([], dtype=bool),
        }
    )


def _csr_gather(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For CSR rows ``rows``: the position of each stored entry in the batch and in the arrays."""
    starts = indptr[rows].astype(np.int64)  # compact artifacts store offsets in narrow (unsigned) types
    counts = indptr[rows + 1].astype(np.int64) - starts
    batch_rows = np.repeat(np.arange(rows.size), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return batch_rows, np.repeat(starts, counts) + offsets


class _UserTable:
    """The user vectors, dense ``[n_users, d]`` or sparse CSR (``user_indptr``/``user_indices``/
    ``user_values``, width ``d``); ``rows(users)`` gives the dense ``[len(users), d]`` batch."""

    def __init__(self, dense: np.ndarray | None, csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None, width: int):
        self.dense, self.csr, self.width = dense, csr, width
        self.n_rows = dense.shape[0] if dense is not None else csr[0].size - 1

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], width: int) -> _UserTable:
        if "user_embeddings" in arrays:
            users = np.ascontiguousarray(arrays["user_embeddings"], dtype=np.float32)
            if users.ndim != 2 or width < 0 or users.shape[1] != width:
                raise ValueError(
                    f"user_embeddings {users.shape} and item_embeddings (width {width}) must be 2-D with the same width"
                )
            return cls(users, None, width)
        indptr = np.asarray(arrays["user_indptr"], dtype=np.int64)
        indices = np.asarray(arrays["user_indices"], dtype=np.int64)
        values = np.asarray(arrays["user_values"], dtype=np.float32)
        if (
            indptr.ndim != 1
            or indptr.size < 1
            or indptr[0] != 0
            or indptr[-1] != indices.size
            or values.shape != indices.shape
            or np.any(np.diff(indptr) < 0)
        ):
            raise ValueError("user_indptr, user_indices and user_values do not describe a CSR matrix")
        if width < 0 or (indices.size and (indices.min() < 0 or indices.max() >= width)):
            raise ValueError(f"user_indices must lie in [0, {width}) (the item_embeddings width)")
        return cls(None, (indptr, indices, values), width)

    def rows(self, users: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            return self.dense[users]
        indptr, indices, values = self.csr
        out = np.zeros((users.size, self.width), dtype=np.float32)
        batch_rows, entries = _csr_gather(indptr, users)
        out[batch_rows, indices[entries]] = values[entries]
        return out


class _DenseTables:
    """The plain (``format_version`` 1) tables: a :class:`_UserTable` and the float32 item matrix."""

    def __init__(self, users: _UserTable, items: np.ndarray):
        self.users, self.items = users, items
        self.n_users, self.n_items, self.width = users.n_rows, items.shape[0], items.shape[1]
        self.csr = users.csr
        self._norms: np.ndarray | None = None

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.users.rows(users) @ self.items.T  # [B, N] float32

    def dense_user_rows(self, users: np.ndarray) -> np.ndarray | None:
        """The users' vectors ``[len(users), width]`` of a model without a history table (None with one)."""
        return None if self.csr is not None else self.users.rows(users)

    def item_entries(self, items: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return self.items[items, columns]

    def item_rows(self, items: np.ndarray) -> np.ndarray:
        return self.items[items]

    def item_norms(self) -> np.ndarray:
        if self._norms is None:
            self._norms = np.linalg.norm(self.items, axis=1)
        return self._norms


# --- The compact format (format_version 2) -----------------------------------------------------------
#
# The same tables in fewer bytes (see ``mm_pipeline.compress.artifact``, which writes it): integer arrays
# in the narrowest type that holds them, user keys as raw 32-byte digests, the seen items shared with the
# user history when they are the same, and the float tables quantized. The user table's first
# ``history_width`` columns are sparse (the user's weighted history, CSR); the rest are dense. The item
# table splits the same way: its history block is stored *transposed*, one row per history item
# (``[history_width, n_items]``), so a batch of users reads only the rows of the items in its histories;
# its dense block keeps one row per item. Every float block is ``fp16`` values, or ``int8`` / ``int4`` codes
# times one scale per row (``x[r, c] = code[r, c] * scale[r]``, symmetric, codes in [-127, 127] /
# [-7, 7]; int4 codes packed two to a byte, ``code + 8``, low nibble first), plus, for ``int4_outliers``,
# ``k`` (column, fp16 value) outliers per row added on top. A sparse block (an item-item core that is
# mostly zeros) is CSR over its rows with the codes of the stored entries in one stream.
# Scoring dequantizes only what a request batch needs, vectorised.
COMPACT_FORMAT_VERSION = 2
# fp32: the plain format (format_version 1). fp32_compact: the compact format without rounding (what the
# lossless part alone saves). int4_outliers: int4 rows whose largest entries are kept in fp16 (mixed
# precision); its blocks name their own codec where it differs (``<block>_codec``).
COMPRESSIONS = ("fp32", "fp32_compact", "fp16", "int8", "int4_outliers", "int4")
BLOCK_CODECS = ("fp32", "fp16", "int8", "int4")
UNSCALED_CODECS = ("fp32", "fp16")  # values stored as they are, no scale
BLOCK_CODEC = {"fp32_compact": "fp32", "int4_outliers": "int4"}  # a block's codec, unless it names its own
QUANTIZED_LEVELS = {"int8": 127, "int4": 7}
KEY_DIGEST_BYTES = 32
DECODE_BLOCK_ROWS = 1024  # rows of an item-item block decoded at a time (CompactTables.dense_arrays)
_COMPACT_REQUIRED = ("table_shape", "history_width", "compression", "item_ids", "user_key_digests", "key_check")


def unpack_int4(packed: np.ndarray, width: int) -> np.ndarray:
    """The int8 codes ``[..., width]`` of int4 codes packed two to a byte along the last axis."""
    packed = np.asarray(packed, dtype=np.uint8)
    out = np.empty((*packed.shape[:-1], 2 * packed.shape[-1]), dtype=np.uint8)
    np.bitwise_and(packed, 0x0F, out=out[..., 0::2])
    np.right_shift(packed, 4, out=out[..., 1::2])
    out -= 8  # wraps around in uint8: read as int8, the code
    return out.view(np.int8)[..., :width]


def _nibbles(stream: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The float32 int4 codes at ``positions`` of a packed stream (code ``p`` in byte ``p // 2``)."""
    byte = stream[positions >> 1]
    return np.where(positions & 1, byte >> 4, byte & 0xF).astype(np.float32) - 8.0


class _Block:
    """A float32 ``[n_rows, width]`` block as stored (dense codes, see the format notes above), with
    optionally each row's outliers: ``k`` (column, fp16 value) pairs per row added to the decoded codes
    (whose own code there is 0), so the row's scale covers the rest only."""

    def __init__(
        self,
        codes: np.ndarray,
        scale: np.ndarray | None,
        compression: str,
        shape: tuple[int, int],
        outliers: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        n_rows, width = shape
        if compression not in BLOCK_CODECS:
            raise ValueError(f"unknown block codec {compression!r}; expected one of {BLOCK_CODECS}")
        packed = -(-width // 2) if compression == "int4" else width
        if codes.shape != (n_rows, packed):
            raise ValueError(f"a {compression} block of shape {shape} needs codes of shape {(n_rows, packed)}")
        if compression not in UNSCALED_CODECS and (scale is None or scale.shape != (n_rows,)):
            raise ValueError(f"a {compression} block of {n_rows} rows needs one scale per row")
        if outliers is not None:
            columns, values = outliers
            if columns.ndim != 2 or columns.shape[0] != n_rows or values.shape != columns.shape:
                raise ValueError(f"the outliers of a block of {n_rows} rows must be two [n_rows, k] arrays")
            if columns.size and int(columns.max()) >= width:
                raise ValueError(f"outlier columns must lie in [0, {width})")
            outliers = (columns.astype(np.int64), values.astype(np.float32))
        self.codes, self.compression, self.shape, self.outliers = codes, compression, shape, outliers
        self.scale = None if scale is None else scale.astype(np.float32)

    def values(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The rows' codes as float32, not yet scaled (fp32 / fp16: the values themselves)."""
        codes = self.codes if rows is None else self.codes[rows]
        if self.compression == "int4":
            codes = unpack_int4(codes, self.shape[1])
        return codes.astype(np.float32)

    def row_scale(self, rows: np.ndarray | None = None) -> np.ndarray | None:
        if self.scale is None:
            return None
        return self.scale if rows is None else self.scale[rows]

    def rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        values, scale = self.values(rows), self.row_scale(rows)
        values = values if scale is None else values * scale[:, None]
        if self.outliers is not None:
            columns, extra = (a if rows is None else a[rows] for a in self.outliers)
            np.put_along_axis(values, columns, np.take_along_axis(values, columns, axis=1) + extra, axis=1)
        return values

    def _outlier_matrix(self, rows: np.ndarray | None = None):
        """The rows' outliers as a scipy CSR matrix ``[len(rows), width]`` (``None`` without outliers)."""
        if self.outliers is None:
            return None
        import scipy.sparse as sp

        columns, values = (a if rows is None else a[rows] for a in self.outliers)
        n, k = columns.shape
        indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
        return sp.csr_matrix((values.ravel(), columns.ravel(), indptr), shape=(n, self.shape[1]))

    def left_product(self, x, rows: np.ndarray) -> np.ndarray:
        """``x @ block[rows]`` for a dense or scipy sparse ``x``: the scales folded into ``x``, so the rows
        are decoded once and a sparse ``x`` (a batch's histories) costs ``nnz(x) * n_columns``; the
        outliers, if any, are one more sparse product."""
        scale = self.row_scale(rows)
        scaled = x
        if scale is not None:
            scaled = x.multiply(scale[None, :]).tocsr() if hasattr(x, "multiply") else x * scale[None, :]
        out = np.asarray(scaled @ self.values(rows), dtype=np.float32)
        outliers = self._outlier_matrix(rows)
        if outliers is not None:
            extra = x @ outliers
            out += extra.toarray() if hasattr(extra, "toarray") else np.asarray(extra)
        return out

    def right_product(self, x: np.ndarray) -> np.ndarray:
        """``x @ block.T`` (``[B, n_rows]``), the row scales applied to the product."""
        out = x @ self.values().T
        out = out if self.scale is None else out * self.scale[None, :]
        outliers = self._outlier_matrix()
        if outliers is not None:
            out += np.asarray(outliers @ x.T).T
        return out

    def entries(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        rows, columns = np.asarray(rows, dtype=np.int64), np.asarray(columns, dtype=np.int64)
        if self.compression == "int4":
            width = self.codes.shape[1]
            values = _nibbles(self.codes.reshape(-1), rows * (2 * width) + columns)
        else:
            values = self.codes[rows, columns].astype(np.float32)
        values = values if self.scale is None else values * self.scale[rows]
        if self.outliers is not None:
            match = self.outliers[0][rows] == columns[:, None]
            values = values + (self.outliers[1][rows] * match).sum(axis=1)
        return values

    def square_norms(self, axis: int, chunk: int = 1024) -> np.ndarray:
        """Sum of squares over ``axis`` (1: per row, 0: per column), decoded ``chunk`` rows at a time."""
        n_rows = self.shape[0]
        out = np.zeros(self.shape[1 - axis], dtype=np.float64)
        for start in range(0, n_rows, chunk):
            part = np.square(self.rows(np.arange(start, min(start + chunk, n_rows))), dtype=np.float64)
            if axis == 1:
                out[start : start + part.shape[0]] = part.sum(axis=1)
            else:
                out += part.sum(axis=0)
        return out


class _SparseBlock(_Block):
    """A mostly-zero block as CSR over its rows: ``indptr``/``indices`` and the stored entries' codes in
    one stream (int4: packed, two per byte), with one scale per row."""

    def __init__(self, indptr, indices, codes, scale, compression: str, shape: tuple[int, int]):
        n_rows, width = shape
        if compression not in BLOCK_CODECS:
            raise ValueError(f"unknown block codec {compression!r}; expected one of {BLOCK_CODECS}")
        nnz = int(indptr[-1]) if len(indptr) else 0
        packed = -(-nnz // 2) if compression == "int4" else nnz
        if indptr.shape != (n_rows + 1,) or indices.shape != (nnz,) or codes.shape != (packed,):
            raise ValueError(f"the sparse {compression} block of shape {shape} has inconsistent CSR arrays")
        if nnz and (int(indices.max()) >= width or np.any(np.diff(indptr.astype(np.int64)) < 0)):
            raise ValueError(f"the sparse {compression} block of shape {shape} has indices out of range")
        if compression not in UNSCALED_CODECS and (scale is None or scale.shape != (n_rows,)):
            raise ValueError(f"a {compression} block of {n_rows} rows needs one scale per row")
        self.indptr, self.indices, self.codes, self.compression, self.shape = indptr, indices, codes, compression, shape
        self.outliers = None
        self.scale = None if scale is None else scale.astype(np.float32)

    def _codes_at(self, positions: np.ndarray) -> np.ndarray:
        if self.compression == "int4":
            return _nibbles(self.codes, positions)
        return self.codes[positions].astype(np.float32)

    def values(self, rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(self.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.zeros((rows.size, self.shape[1]), dtype=np.float32)
        batch_rows, positions = _csr_gather(self.indptr, rows)
        out[batch_rows, self.indices[positions]] = self._codes_at(positions)
        return out

    def entries(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        rows, columns = rows.astype(np.int64), columns.astype(np.int64)
        starts, ends = self.indptr[rows].astype(np.int64), self.indptr[rows + 1].astype(np.int64)
        # Sorted indices within each row: the global keys row * width + column increase along the stream.
        key = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr.astype(np.int64)))
        key = key * self.shape[1] + self.indices
        found = np.clip(np.searchsorted(key, rows * self.shape[1] + columns), 0, max(key.size - 1, 0))
        hit = (found >= starts) & (found < ends)
        if key.size:
            hit &= key[found] == rows * self.shape[1] + columns
        values = np.zeros(rows.size, dtype=np.float32)
        values[hit] = self._codes_at(found[hit])
        return values if self.scale is None else values * self.scale[rows]


def _block(arrays: Mapping[str, np.ndarray], name: str, compression: str, shape: tuple[int, int]) -> _Block:
    """Block ``name``, stored with its own codec (``name_codec``) or the artifact's ``compression``."""
    compression = str(np.asarray(arrays[f"{name}_codec"]).item()) if f"{name}_codec" in arrays else compression
    scale = np.asarray(arrays[f"{name}_scale"]) if f"{name}_scale" in arrays else None
    if f"{name}_indptr" in arrays:
        return _SparseBlock(
            np.asarray(arrays[f"{name}_indptr"]),
            np.asarray(arrays[f"{name}_indices"]),
            np.asarray(arrays[f"{name}_codes"]),
            scale,
            compression,
            shape,
        )
    outliers = None
    if f"{name}_outlier_columns" in arrays:
        outliers = (np.asarray(arrays[f"{name}_outlier_columns"]), np.asarray(arrays[f"{name}_outlier_values"]))
    return _Block(np.asarray(arrays[f"{name}_codes"]), scale, compression, shape, outliers)


class _CompactTables:
    """The tables of a compact (``format_version`` 2) artifact, kept as stored and decoded per request batch.

    Scores of a batch: the history block reads the rows of the items in the batch's histories (their
    union), the dense block the whole (small) item block; each is decoded into float32 for that product
    only."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        compression = str(np.asarray(arrays["compression"]).item())
        if compression not in COMPRESSIONS or compression == "fp32":
            raise ValueError(f"unknown compression {compression!r} in a compact artifact")
        shape = np.asarray(arrays["table_shape"]).astype(np.int64)
        if shape.shape != (3,) or np.any(shape < 0):
            raise ValueError("table_shape must be (n_users, n_items, width)")
        self.n_users, self.n_items, self.width = (int(n) for n in shape)
        self.history_width = int(np.asarray(arrays["history_width"]))
        if not 0 <= self.history_width <= self.width:
            raise ValueError(f"history_width {self.history_width} must lie in [0, {self.width}]")
        self.compression, codec = compression, BLOCK_CODEC.get(compression, compression)
        h, rest = self.history_width, self.width - self.history_width
        self.csr = None
        self.item_history = self.user_dense = self.item_dense = None
        if h:
            indptr, indices = np.asarray(arrays["history_indptr"]), np.asarray(arrays["history_indices"])
            values = np.asarray(arrays["history_values"])
            if (
                indptr.shape != (self.n_users + 1,)
                or int(indptr[0]) != 0
                or int(indptr[-1]) != indices.size
                or values.shape != indices.shape
                or np.any(np.diff(indptr.astype(np.int64)) < 0)
            ):
                raise ValueError("history_indptr, history_indices and history_values do not describe a CSR matrix")
            if indices.size and int(indices.max()) >= h:
                raise ValueError(f"history_indices must lie in [0, {h}) (the history width)")
            self.csr = (indptr, indices, values)
            self.item_history = _block(arrays, "item_history", codec, (h, self.n_items))
        if rest:
            self.user_dense = _block(arrays, "user_dense", codec, (self.n_users, rest))
            self.item_dense = _block(arrays, "item_dense", codec, (self.n_items, rest))
        self._norms: np.ndarray | None = None

    def history_rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's history entries: (row in the batch, history column, float32 weight)."""
        indptr, indices, values = self.csr
        batch_rows, entries = _csr_gather(indptr, users)
        return batch_rows, indices[entries].astype(np.int64), values[entries].astype(np.float32)

    def score(self, users: np.ndarray) -> np.ndarray:
        out = np.zeros((users.size, self.n_items), dtype=np.float32)
        if self.csr is not None:
            batch_rows, columns, weights = self.history_rows(users)
            if columns.size:
                import scipy.sparse as sp

                used, position = np.unique(columns, return_inverse=True)
                x = sp.csr_matrix((weights, (batch_rows, position)), shape=(users.size, used.size))
                out += self.item_history.left_product(x, used)
        if self.user_dense is not None:
            out += self.item_dense.right_product(self.user_dense.rows(users))
        return out

    def dense_user_rows(self, users: np.ndarray) -> np.ndarray | None:
        """The users' vectors ``[len(users), width]`` of a model without a history table (None with one)."""
        return None if self.csr is not None or self.user_dense is None else self.user_dense.rows(users)

    def item_entries(self, items: np.ndarray, columns: np.ndarray) -> np.ndarray:
        items, columns = np.asarray(items, dtype=np.int64), np.asarray(columns, dtype=np.int64)
        out = np.zeros(items.size, dtype=np.float32)
        history = columns < self.history_width
        if history.any():
            out[history] = self.item_history.entries(columns[history], items[history])
        if (~history).any():
            out[~history] = self.item_dense.entries(items[~history], columns[~history] - self.history_width)
        return out

    def item_rows(self, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        blocks = []
        if self.item_history is not None:
            columns = np.arange(self.history_width)
            blocks.append(
                self.item_history.entries(np.tile(columns, items.size), np.repeat(items, columns.size)).reshape(
                    items.size, -1
                )
            )
        if self.item_dense is not None:
            blocks.append(self.item_dense.rows(items))
        return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]

    def item_norms(self) -> np.ndarray:
        if self._norms is None:
            square = np.zeros(self.n_items, dtype=np.float64)
            if self.item_history is not None:
                square += self.item_history.square_norms(axis=0)
            if self.item_dense is not None:
                square += self.item_dense.square_norms(axis=1)
            self._norms = np.sqrt(square).astype(np.float32)
        return self._norms

    def dense_arrays(self) -> dict[str, np.ndarray]:
        """The tables decoded into the plain format's arrays (``item_embeddings`` and ``user_embeddings``
        or the CSR ``user_indptr``/``user_indices``/``user_values``), float32."""
        h = self.history_width
        # Column-major with a history: its block is stored as the item-item matrix (item_history.rows()), whose
        # transpose is then written in place without a transposed copy.
        order = "F" if self.item_history is not None else "C"
        items = np.zeros((self.n_items, self.width), dtype=np.float32, order=order)
        if self.item_history is not None:
            # Decoded a block of rows at a time into place: decoding it whole held its codes, their float32
            # values and the scaled values at once (3.2 GB beside the 1.6 GB table at 20k items).
            history = items[:, :h].T  # the item-item matrix, C-ordered: a view of the table
            for start in range(0, h, DECODE_BLOCK_ROWS):
                history[start : start + DECODE_BLOCK_ROWS] = self.item_history.rows(
                    np.arange(start, min(start + DECODE_BLOCK_ROWS, h))
                )
        if self.item_dense is not None:
            items[:, h:] = self.item_dense.rows()
        if self.csr is None:
            return {"item_embeddings": items, "user_embeddings": self.user_dense.rows()}
        indptr, indices, values = (np.asarray(a) for a in self.csr)
        indptr = indptr.astype(np.int64)
        if self.user_dense is None:
            return {
                "item_embeddings": items,
                "user_indptr": indptr,
                "user_indices": indices.astype(np.int64),
                "user_values": values.astype(np.float32),
            }
        dense, rest = self.user_dense.rows(), self.width - h
        counts = np.diff(indptr) + rest
        new_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        user_of = np.repeat(np.arange(self.n_users), np.diff(indptr))
        # Each row: its history entries, then every dense column (zeros included, as in the plain format).
        slot = np.arange(indptr[-1]) - indptr[user_of] + new_indptr[user_of]
        out_indices = np.empty(new_indptr[-1], dtype=np.int64)
        out_values = np.empty(new_indptr[-1], dtype=np.float32)
        out_indices[slot], out_values[slot] = indices.astype(np.int64), values.astype(np.float32)
        tail = (new_indptr[1:] - rest)[:, None] + np.arange(rest)[None, :]
        out_indices[tail.ravel()] = np.tile(np.arange(h, self.width), self.n_users)
        out_values[tail.ravel()] = dense.ravel()
        return {
            "item_embeddings": items,
            "user_indptr": new_indptr,
            "user_indices": out_indices,
            "user_values": out_values,
        }


def user_keys_from_digests(digests: np.ndarray) -> np.ndarray:
    """The hex user keys (as :func:`user_key` writes them) of ``[n_users, 32]`` raw digests."""
    digests = np.ascontiguousarray(digests, dtype=np.uint8)
    if digests.ndim != 2 or digests.shape[1] != KEY_DIGEST_BYTES:
        raise ValueError(f"user_key_digests must be [n_users, {KEY_DIGEST_BYTES}] bytes, got {digests.shape}")
    text = digests.tobytes().hex().encode("ascii")
    return np.frombuffer(text, dtype=f"S{2 * KEY_DIGEST_BYTES}").astype(f"<U{2 * KEY_DIGEST_BYTES}")


def plain_serving_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Serving arrays in the plain (``format_version`` 1) layout: a compact artifact decoded (float32
    tables, hex ``user_keys``, ``seen_*`` and ``popular_items`` as int64, parts as float32/int64), or a
    plain one as it is. What offline tools that read the tables (``served_scorer``) start from."""
    version = int(np.asarray(arrays["format_version"])) if "format_version" in arrays else 1
    if version != COMPACT_FORMAT_VERSION:
        return dict(arrays)
    tables = _CompactTables(arrays)
    out = {"format_version": np.asarray(1, dtype=np.int64), **tables.dense_arrays()}
    # Without the keys and ids (a variant kept for evaluation), the tables alone.
    if "user_key_digests" in arrays:
        out["user_keys"] = user_keys_from_digests(arrays["user_key_digests"])
    for name in ("item_ids", "key_check"):
        if name in arrays:
            out[name] = np.asarray(arrays[name])
    if "popular_items" in arrays:
        out["popular_items"] = np.asarray(arrays["popular_items"], dtype=np.int64)
    for cap in ("max_k", "max_rows"):
        if cap in arrays:
            out[cap] = np.asarray(arrays[cap], dtype=np.int64)
    if "seen_indptr" in arrays:
        out["seen_indptr"] = np.asarray(arrays["seen_indptr"], dtype=np.int64)
        out["seen_indices"] = np.asarray(arrays["seen_indices"], dtype=np.int64)
    elif int(np.asarray(arrays.get("seen_from_history", 0))) and tables.csr is not None:
        out["seen_indptr"] = np.asarray(tables.csr[0], dtype=np.int64)
        out["seen_indices"] = np.asarray(tables.csr[1], dtype=np.int64)
    for name, value in arrays.items():
        if name.startswith("parts_"):
            kind = np.asarray(value).dtype.kind
            out[name] = np.asarray(value, dtype=np.float32 if kind == "f" else np.int64) if kind in "fiu" else value
    return out


class RecommenderPyfunc(PythonModel):
    """Top-k recommendations from a dot-product recommender, in long format.

    Input: a DataFrame with a ``user_id`` column (compared as ``str(user_id)``) and an optional
    integer ``k`` column (missing -> 10; capped at the number of items; above the model's ``max_k`` the
    request is refused, as is a request of more than ``max_rows`` rows). Output: one row per
    recommendation with columns ``user_id`` (as given), ``rank`` (1..k), ``item_id``, ``score`` and
    ``fallback``, grouped by input row in input order.

    * **Known users** get the ``k`` items with the highest :math:`\\langle p_u, q_i \\rangle`,
      excluding the items they interacted with in training when the artifact holds them (so a user
      who has seen nearly every item can get fewer than ``k`` rows). Rows are ordered by score, then
      item index; which of several items tied at the k-th place gets in is deterministic.
      All known users in a call are scored with one matrix product, which holds a
      ``[n_known_users, n_items]`` float32 matrix: send very large requests in batches.
    * **Unknown users** (cold start, ids the model was not trained on, or every user when the server has
      no user key secret or the wrong one) get the ``k`` most popular
      training items, ``fallback=True`` and ``score=NaN`` (the popularity ranking has no score on
      the model's scale). Nothing is excluded for them, since nothing is known about them.

    The instance passed to ``log_model`` is empty: every array lives in the ``serving`` ``.npz``
    artifact, read with ``allow_pickle=False`` in :meth:`load_context`.
    """

    def load_context(self, context) -> None:
        path = context.artifacts[ARTIFACT_KEY]
        with np.load(path, allow_pickle=False) as npz:
            self.load_arrays({name: npz[name] for name in npz.files})

    def load_arrays(self, arrays: Mapping[str, np.ndarray], secret: bytes | None = None) -> RecommenderPyfunc:
        """Load the serving arrays (as built by :func:`export_serving_arrays`) and validate them; ``secret``
        (default: :func:`read_user_key_secret`) is the user key secret the model was keyed with."""
        version = int(np.asarray(arrays["format_version"])) if "format_version" in arrays else 1
        if version == COMPACT_FORMAT_VERSION:
            missing = [name for name in (*_COMPACT_REQUIRED, "popular_items") if name not in arrays]
            if missing:
                raise ValueError(f"compact serving arrays are missing {missing}")
            tables: _DenseTables | _CompactTables = _CompactTables(arrays)
            user_keys = user_keys_from_digests(arrays["user_key_digests"])
        else:
            missing = [name for name in _REQUIRED_ARRAYS if name not in arrays]
            if "user_embeddings" not in arrays and not all(k in arrays for k in SPARSE_USER_ARRAYS):
                missing.append("user_embeddings (or the sparse user_indptr, user_indices, user_values)")
            if missing:
                raise ValueError(f"serving arrays are missing {missing}")
            items = _float32_table(arrays["item_embeddings"])
            if items.ndim != 2:
                raise ValueError(f"item_embeddings must be 2-D, got shape {items.shape}")
            tables = _DenseTables(_UserTable.from_arrays(arrays, items.shape[1]), items)
            user_keys = np.asarray(arrays["user_keys"])
        n_items, n_users = tables.n_items, tables.n_users
        item_ids = np.asarray(arrays["item_ids"])
        popular = np.asarray(arrays["popular_items"], dtype=np.int64)
        if item_ids.shape != (n_items,):
            raise ValueError(f"item_ids has shape {item_ids.shape}, expected ({n_items},)")
        if user_keys.shape != (n_users,):
            raise ValueError(f"user_keys has shape {user_keys.shape}, expected ({n_users},)")
        if popular.ndim != 1 or popular.size == 0 or popular.min() < 0 or popular.max() >= n_items:
            raise ValueError("popular_items must be a non-empty 1-D array of item indices")
        has_indptr, has_indices = "seen_indptr" in arrays, "seen_indices" in arrays
        if has_indptr != has_indices:
            raise ValueError("seen_indptr and seen_indices must be given together")
        if has_indptr:
            indptr, indices = np.asarray(arrays["seen_indptr"]), np.asarray(arrays["seen_indices"])
            if indptr.shape != (n_users + 1,) or indptr[0] != 0 or indptr[-1] != indices.size:
                raise ValueError("seen_indptr does not describe one row per user over seen_indices")
            if indices.size and (indices.min() < 0 or indices.max() >= n_items):
                raise ValueError("seen_indices holds item indices out of range")
        elif version == COMPACT_FORMAT_VERSION and int(np.asarray(arrays.get("seen_from_history", 0))):
            if tables.csr is None or tables.history_width != n_items:
                raise ValueError("seen_from_history needs a user history over the items")
            indptr, indices = tables.csr[0], tables.csr[1]  # the seen items are the history's columns
        else:
            indptr = indices = None
        self._tables = tables
        self._item_ids = item_ids.astype(str)
        self._user_keys = user_keys.astype(str)
        self._load_parts(arrays)
        self._load_interest(arrays)
        self._key_to_user = {str(key): row for row, key in enumerate(self._user_keys.tolist())}
        self._key_check = str(np.asarray(arrays["key_check"]).item())
        self._arrays = dict(arrays)  # references, no copies: see serving_arrays
        self._popular = popular
        self._seen_indptr, self._seen_indices = indptr, indices
        self.max_k = _cap_from_env(MAX_K_ENV, int(arrays["max_k"]) if "max_k" in arrays else DEFAULT_MAX_K)
        self.max_rows = _cap_from_env(
            MAX_ROWS_ENV, int(arrays["max_rows"]) if "max_rows" in arrays else DEFAULT_MAX_ROWS
        )
        return self.use_secret(secret if secret is not None else read_user_key_secret())

    def serving_arrays(self) -> dict[str, np.ndarray]:
        """The arrays this model was loaded from, as read from its artifact (shared, not copied): a reader that
        re-scores the served model from them (``mm_pipeline.registry.served``) needs no second copy of its
        tables (1.6 GB for an item-item model at 20k items)."""
        return dict(self._arrays)

    def use_secret(self, secret: bytes | None) -> RecommenderPyfunc:
        """Recognise users with ``secret``. Without it, or with a secret the model was not keyed with,
        no user is recognised (every request gets the popularity fallback) and a warning says why."""
        self._secret = None
        if secret is None:
            _log.warning(
                "no user key secret (%s / %s): every request gets the popularity fallback", SECRET_ENV, SECRET_FILE_ENV
            )
        elif secret_fingerprint(secret) != self._key_check:
            _log.warning(
                "the user key secret is not the one this model was keyed with (rotated?): every "
                "request gets the popularity fallback until the model is retrained under it"
            )
        else:
            self._secret = _secret_bytes(secret)
        return self

    def _load_parts(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The score decomposition for explanations (see ``EmbeddingRecommender.parts``)."""
        width = int(arrays["parts_history_width"]) if "parts_history_width" in arrays else 0
        if width and self._tables.csr is None:
            width = 0  # a dense user table has no per-item history columns to attribute
        self._history_width = width
        self._modality_parts = {}
        if width:
            import scipy.sparse as sp

            names = [str(n) for n in np.asarray(arrays.get("parts_modalities", np.asarray([], dtype=str))).ravel()]
            for name in names:
                self._modality_parts[name] = sp.csr_matrix(
                    (
                        np.asarray(arrays[f"parts_{name}_values"], dtype=np.float32),
                        np.asarray(arrays[f"parts_{name}_indices"], dtype=np.int64),
                        np.asarray(arrays[f"parts_{name}_indptr"], dtype=np.int64),
                    ),
                    shape=(self.n_items, width),
                )
        # An embedding model's content split (integrated gradients per modality; dense user tables only).
        self._content_columns, self._content_parts = None, {}
        if "parts_content_columns" in arrays and self._tables.csr is None:
            a, b = (int(c) for c in np.asarray(arrays["parts_content_columns"]))
            names = [str(n) for n in np.asarray(arrays["parts_content_modalities"]).ravel()]
            if not 0 <= a < b <= self._tables.width:
                raise ValueError(f"parts_content_columns ({a}, {b}) lie outside the item_embeddings width")
            for name in names:
                table = np.asarray(arrays[f"parts_content_{name}_attribution"], dtype=np.float32)
                if table.shape != (self.n_items, b - a):
                    raise ValueError(f"parts_content_{name}_attribution has shape {table.shape}")
                self._content_parts[name] = table
            self._content_columns = (a, b)

    def _load_interest(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The aligned per-modality item embeddings and their null (``interest_*``, see
        ``mm_pipeline.explain.interest.InterestSpace``), when stored: users' interest per modality."""
        self._interest = None
        if "interest_modalities" not in arrays:
            return
        interest = {name: np.asarray(arrays[f"interest_{name}"]) for name in _INTEREST_ARRAYS}
        interest["embeddings"] = interest["embeddings"].astype(np.float32)  # fp16 in a compact artifact
        n_items, n_modalities = self.n_items, interest["modalities"].size
        if (
            interest["embeddings"].ndim != 3
            or interest["embeddings"].shape[:2] != (n_items, n_modalities)
            or interest["present"].shape != (n_items, n_modalities)
            or interest["null_mean"].shape != (n_modalities, interest["null_sizes"].size)
        ):
            raise ValueError("the interest_* arrays do not match the items and modalities of this model")
        self._interest = interest

    @property
    def recognises_users(self) -> bool:
        return getattr(self, "_secret", None) is not None

    @property
    def n_items(self) -> int:
        return int(self._tables.n_items)

    @property
    def n_users(self) -> int:
        return int(self._tables.n_users)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            raise TypeError(f"model_input must be a pandas DataFrame, got {type(model_input).__name__}")
        if "user_id" not in model_input.columns:
            raise ValueError(
                f"model_input must have a 'user_id' column, got columns {list(map(str, model_input.columns))}"
            )
        if not hasattr(self, "_tables"):
            raise RuntimeError(
                "RecommenderPyfunc has no arrays: load it with mlflow.pyfunc.load_model or call load_arrays first"
            )
        raw_ids = model_input["user_id"]
        if raw_ids.isna().any():
            raise ValueError("model_input column 'user_id' has missing values")
        n_rows = len(model_input)
        if n_rows == 0:
            return _empty_output()
        if n_rows > self.max_rows:
            raise ValueError(
                f"the request has {n_rows} rows, above this server's cap of {self.max_rows} "
                f"({MAX_ROWS_ENV}): send the users in smaller batches"
            )
        ks = self._requested_k(model_input)
        ids = [str(u) for u in raw_ids.tolist()]
        if self._secret is None:
            rows = np.full(n_rows, -1, dtype=np.int64)
        else:
            rows = np.fromiter(
                (self._key_to_user.get(user_key(u, self._secret), -1) for u in ids), dtype=np.int64, count=n_rows
            )

        # Known users: one matmul, mask seen items, top-k (sorted by score, then item index).
        known = np.flatnonzero(rows >= 0)
        position_parts, item_parts, score_parts, rank_parts = [], [], [], []
        if known.size:
            batch, rank, top, top_scores = self._rank_rows(rows[known], ks[known])
            position_parts.append(known[batch])
            item_parts.append(top)
            score_parts.append(top_scores.astype(np.float64))
            rank_parts.append(rank)

        # Unknown users: the most popular training items, no score.
        unknown = np.flatnonzero(rows < 0)
        if unknown.size:
            k_unknown = np.minimum(ks[unknown], self._popular.size)
            kmax = int(k_unknown.max())
            rank = np.broadcast_to(np.arange(kmax), (unknown.size, kmax))
            keep = rank < k_unknown[:, None]
            position_parts.append(np.broadcast_to(unknown[:, None], rank.shape)[keep])
            item_parts.append(np.broadcast_to(self._popular[:kmax], rank.shape)[keep])
            score_parts.append(np.full(int(keep.sum()), np.nan))
            rank_parts.append(rank[keep])

        position = np.concatenate(position_parts)
        ranks = np.concatenate(rank_parts)
        items = np.concatenate(item_parts)
        scores_out = np.concatenate(score_parts)
        order = np.lexsort((ranks, position))
        position, ranks, items, scores_out = position[order], ranks[order], items[order], scores_out[order]
        out = pd.DataFrame(
            {
                "user_id": np.asarray(ids, dtype=object)[position],
                "rank": (ranks + 1).astype(np.int64),
                "item_id": self._item_ids[items].astype(object),
                "score": scores_out,
                "fallback": rows[position] < 0,
            }
        )
        if "explain" in model_input.columns:
            wanted = model_input["explain"].fillna(False).astype(bool).to_numpy()
            if wanted.any():
                out = pd.concat([out, self.explain(rows[position], items, scores_out, wanted[position])], axis=1)
        return out

    def _rank_rows(self, users: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, ...]:
        """The top ``ks[j]`` unseen items of user-table row ``users[j]``, with one matrix product.

        Returns ``(j, rank, item, score)`` (0-based rank) for every recommendation, grouped by ``j``
        in rank order: by score, then item index; seen items never appear."""
        scores = self._tables.score(users)  # [B, N] float32
        if self._seen_indptr is not None:
            starts, ends = self._seen_indptr[users], self._seen_indptr[users + 1]
            if (ends - starts).sum():
                batch_rows, entries = _csr_gather(self._seen_indptr, users)
                scores[batch_rows, self._seen_indices[entries]] = -np.inf
        kmax = int(ks.max())
        if kmax < self.n_items:
            candidates = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
        else:
            candidates = np.broadcast_to(np.arange(self.n_items), scores.shape)
        cand_scores = np.take_along_axis(scores, candidates, axis=1)
        order = np.lexsort((candidates, -cand_scores), axis=-1)
        top = np.take_along_axis(candidates, order, axis=1)
        top_scores = np.take_along_axis(cand_scores, order, axis=1)
        rank = np.broadcast_to(np.arange(kmax), top.shape)
        keep = (rank < ks[:, None]) & (top_scores != -np.inf)
        return np.broadcast_to(np.arange(users.size)[:, None], top.shape)[keep], rank[keep], top[keep], top_scores[keep]

    def rank_user_rows(self, users: np.ndarray, k: int = DEFAULT_K) -> pd.DataFrame:
        """The top ``k`` recommendations of the users in rows ``users`` of the serving arrays (what
        :meth:`predict` answers for their ids), for scoring every user without their raw ids.

        Columns ``user_key`` (the stored keyed hash), ``rank`` (1..k), ``item_id`` and ``score``;
        rows grouped by user in the order given. One ``[len(users), n_items]`` matrix: pass batches."""
        users = np.asarray(users, dtype=np.int64)
        if users.ndim != 1 or (users.size and (users.min() < 0 or users.max() >= self.n_users)):
            raise ValueError(f"users must be a 1-D array of rows in [0, {self.n_users})")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if users.size == 0:
            return pd.DataFrame(
                {
                    "user_key": pd.Series([], dtype=object),
                    "rank": pd.Series([], dtype=np.int64),
                    "item_id": pd.Series([], dtype=object),
                    "score": pd.Series([], dtype=np.float32),
                }
            )
        batch, rank, items, scores = self._rank_rows(users, np.full(users.size, min(int(k), self.n_items)))
        return pd.DataFrame(
            {
                "user_key": self._user_keys[users[batch]].astype(object),
                "rank": (rank + 1).astype(np.int64),
                "item_id": self._item_ids[items].astype(object),
                "score": scores,
            }
        )

    def explain(self, users: np.ndarray, items: np.ndarray, scores: np.ndarray, wanted: np.ndarray) -> pd.DataFrame:
        r"""Why each (user, item) row was recommended: one column per score part, ``because`` and ``reason``.

        * ``share_<part>``: the part's share of the score, :math:`|s_p| / \sum_q |s_q|`. For an item-item
          model (EASE, item k-NN, the hybrid) the score splits exactly: ``collaborative`` (the item-item
          core over the history), one part per modality (the content graphs), ``graph`` (the GNN's dot
          product, the rest of the score). An embedding model with a content split (``mm_gcn``, VBPR) has
          one part per modality, the integrated gradients of the score over that modality's content input
          (see ``mm_pipeline.explain.attribution``), and ``collaborative``, the rest. Any other embedding
          model has one part, ``embedding``.
        * ``because``: up to three of the user's training items that contribute most, ``|``-joined. Exact
          contributions :math:`x_{uj} W_{ji}` for item-item models; for embedding models the training items
          whose item vectors are most like the recommended one (cosine).
        * ``interest``: the user's dominant modality in the aligned space (``text``, ``image``, ``audio``,
          ``mixed`` or ``none``; empty without the stored ``interest_*`` arrays) and ``interest_match``: the
          item's match with the user's profile in it (a z-score; NaN unless one modality dominates). See
          ``mm_pipeline.explain.interest``.
        * ``reason``: a sentence built from these, naming the dominant modality when the item matches it.

        Rows of unknown users (``users < 0``, the popularity fallback) and rows not ``wanted`` are left empty.
        """
        n = users.size
        ask = wanted & (users >= 0)
        if self._history_width:
            parts = ["collaborative", *self._modality_parts, "graph"]
        elif self._content_parts:
            parts = ["collaborative", *self._content_parts]
        else:
            parts = ["embedding"]
        shares = {p: np.full(n, np.nan) for p in parts}
        because = np.full(n, "", dtype=object)
        interest, match = np.full(n, "", dtype=object), np.full(n, np.nan)
        reason = np.where(wanted & (users < 0), "popular with everyone (we do not know this user yet)", "")
        reason = reason.astype(object)
        rows = np.flatnonzero(ask)
        if rows.size:
            u, i, total = users[rows], items[rows], scores[rows]
            if self._history_width:
                values, evidence = self._history_parts(u, i)
                history = sum(values.values()) if values else np.zeros(rows.size)
                values = {
                    "collaborative": history - sum(values[m] for m in self._modality_parts),
                    **{m: values[m] for m in self._modality_parts},
                    "graph": total - history,
                }
            elif self._content_parts:
                a, b = self._content_columns
                user_rows = self._tables.dense_user_rows(u)[:, a:b]
                content = {m: (user_rows * t[i]).sum(1).astype(np.float64) for m, t in self._content_parts.items()}
                values = {"collaborative": total - sum(content.values()), **content}
                evidence = self._similar_history(u, i)
            else:
                values, evidence = {"embedding": total}, self._similar_history(u, i)
            magnitude = sum(np.abs(v) for v in values.values())
            safe = np.where(magnitude > 0, magnitude, 1.0)
            for part, value in values.items():
                shares[part][rows] = np.abs(value) / safe
            because[rows] = evidence
            top_part = np.asarray(parts)[np.argmax(np.stack([shares[p][rows] for p in parts]), axis=0)]
            reason[rows] = [_reason(e, p, float(shares[p][r])) for e, p, r in zip(evidence, top_part, rows)]
            if self._interest is not None and self._seen_indptr is not None:
                interest[rows], match[rows], fits = self._user_interest(u, i)
                reason[rows] = [
                    r + _TASTE_WORDS.get(t, "") if f else r for r, t, f in zip(reason[rows], interest[rows], fits)
                ]
        return pd.DataFrame(
            {
                **{f"share_{p}": v for p, v in shares.items()},
                "because": because,
                "reason": reason,
                "interest": interest,
                "interest_match": match,
            }
        )

    def _user_interest(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the user's dominant modality in the aligned space (from their training items), the
        item's match with the user's profile in it and whether it matches. The request-time half of
        ``mm_pipeline.explain.interest`` (its module doc has the math; a test holds the two equal)."""
        import scipy.sparse as sp

        s = self._interest
        min_items, threshold, margin, match_at = (float(v) for v in s["thresholds"])
        emb, present = s["embeddings"].astype(np.float64), s["present"].astype(np.float64)
        n_items, n_modalities, dim = emb.shape
        unique, inverse = np.unique(users, return_inverse=True)
        row, entries = _csr_gather(self._seen_indptr, unique)
        x = sp.csr_matrix((np.ones(row.size), (row, self._seen_indices[entries])), shape=(unique.size, n_items))
        count = np.asarray(x @ present)
        mean = np.asarray(x @ emb.reshape(n_items, -1)).reshape(-1, n_modalities, dim) / np.maximum(count, 1)[..., None]
        coherence = np.linalg.norm(mean, axis=2)
        profile = mean / np.maximum(coherence, 1e-12)[..., None]
        strength = np.full(coherence.shape, -np.inf)
        log_k, log_sizes = np.log(np.maximum(count, min_items)), np.log(s["null_sizes"])
        for m in range(n_modalities):
            null = np.interp(log_k[:, m], log_sizes, s["null_mean"][m])
            spread = np.interp(log_k[:, m], log_sizes, s["null_std"][m])
            strength[:, m] = np.where(count[:, m] >= min_items, (coherence[:, m] - null) / spread, -np.inf)
        order = np.argsort(-strength, axis=1, kind="stable")
        best = strength[np.arange(unique.size), order[:, 0]]
        second = strength[np.arange(unique.size), order[:, 1]] if n_modalities > 1 else np.full(unique.size, -np.inf)
        names = s["modalities"].astype(str).astype(object)
        dominant = np.where(second >= np.maximum(threshold, best - margin), "mixed", names[order[:, 0]])
        dominant = np.where(best >= threshold, dominant, "none")[inverse]
        m = order[inverse, 0]
        p = profile[inverse, m]
        z = emb[items, m]
        spread = np.sqrt(np.maximum(np.einsum("bd,bde,be->b", p, s["item_cov"][m], p), 1e-12))
        match = ((z * p).sum(1) - (s["item_mean"][m] * p).sum(1)) / spread
        single = ~np.isin(dominant, ["mixed", "none"])
        match = np.where(single & (present[items, m] > 0), match, np.nan)
        return dominant.astype(object), match, single & (match >= match_at)

    def _history_entries(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The history entries of each row's user: (row, history item, weight) within ``history_width``."""
        indptr, indices, values = self._tables.csr
        batch_rows, entries = _csr_gather(indptr, users)
        j, x = indices[entries].astype(np.int64), values[entries].astype(np.float32)
        keep = j < self._history_width
        return batch_rows[keep], j[keep], x[keep]

    def _history_parts(self, users: np.ndarray, items: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
        """Per row: the history block's score (key ``history``) and each modality's share of it, and the
        most contributing history items."""
        import scipy.sparse as sp

        row, j, x = self._history_entries(users)
        contribution = x * self._tables.item_entries(items[row], j)
        out = {"history": np.bincount(row, weights=contribution, minlength=users.size)}
        history = sp.csr_matrix((x, (row, j)), shape=(users.size, self._history_width))
        for modality, part in self._modality_parts.items():
            out[modality] = np.asarray(history.multiply(part[items]).sum(axis=1)).ravel()
        return out, self._top_items(row, j, contribution, users.size)

    def _similar_history(self, users: np.ndarray, items: np.ndarray) -> list[str]:
        """Per row: the user's training items most like the recommended one (cosine of item vectors)."""
        if self._seen_indptr is None:
            return [""] * users.size
        row, entries = _csr_gather(self._seen_indptr, users)
        j = self._seen_indices[entries].astype(np.int64)
        norms = np.where(self._tables.item_norms() == 0, 1.0, self._tables.item_norms())
        vectors = self._tables.item_rows(j) * self._tables.item_rows(items[row])
        cosine = vectors.sum(axis=1) / (norms[j] * norms[items[row]])
        return self._top_items(row, j, cosine, users.size)

    def _top_items(self, row: np.ndarray, item: np.ndarray, weight: np.ndarray, n_rows: int) -> list[str]:
        """Per row, up to ``EXPLAIN_EVIDENCE`` item ids with the largest positive ``weight``, ``|``-joined."""
        order = np.lexsort((item, -weight, row))
        row, item, weight = row[order], item[order], weight[order]
        starts = np.searchsorted(row, row, side="left")
        keep = (np.arange(row.size) - starts < EXPLAIN_EVIDENCE) & (weight > 0)
        joined = (
            pd.Series(self._item_ids[item[keep]]).groupby(row[keep]).agg("|".join)
            if keep.any()
            else pd.Series(dtype=object)
        )
        return joined.reindex(range(n_rows), fill_value="").tolist()

    def _requested_k(self, model_input: pd.DataFrame) -> np.ndarray:
        n_rows = len(model_input)
        if "k" not in model_input.columns:
            return np.full(n_rows, min(DEFAULT_K, self.max_k, self.n_items), dtype=np.int64)
        raw = pd.to_numeric(model_input["k"], errors="coerce")
        bad = raw.notna() & ((raw < 1) | (raw != raw.round()))
        bad |= raw.isna() & model_input["k"].notna()
        if bad.any():
            example = model_input["k"][bad].iloc[0]
            raise ValueError(f"model_input column 'k' must hold positive integers, got {example!r}")
        ks = raw.fillna(DEFAULT_K).to_numpy(dtype=np.float64)
        if ks.max() > self.max_k:
            raise ValueError(
                f"k={int(ks.max())} is above this server's cap of {self.max_k} ({MAX_K_ENV}): "
                f"ask for at most {self.max_k} items per user"
            )
        return np.minimum(ks, self.n_items).astype(np.int64)


_PART_WORDS = {
    "collaborative": "what people with similar histories chose",
    "text": "what it reads like",
    "image": "what it looks like",
    "audio": "what it sounds like",
    "graph": "the interaction graph",
    "embedding": "the learned taste profile",
}


# Appended to the reason when the item matches the user's dominant modality (interest column).
_TASTE_WORDS = {
    "text": "; you go mostly by what things are about, and this one fits",
    "image": "; you go mostly by what things look like, and this one fits",
    "audio": "; you go mostly by what things sound like, and this one fits",
}
_INTEREST_ARRAYS = (
    "modalities",
    "embeddings",
    "present",
    "null_sizes",
    "null_mean",
    "null_std",
    "item_mean",
    "item_cov",
    "thresholds",
)


def _reason(evidence: str, part: str, share: float) -> str:
    items = evidence.split("|") if evidence else []
    why = f"mostly {_PART_WORDS.get(part, part)} ({share:.0%} of the score)"
    if not items:
        return why[0].upper() + why[1:]
    named = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"Because you liked {named}; {why}"


def _ids(values: Sequence[Any], name: str, expected: int) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, pd.Index, pd.Series)):
        raise TypeError(f"{name} must be a sequence of ids, got {type(values).__name__}")
    out = []
    for value in values:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            raise ValueError(f"{name} contains a missing id")
        out.append(str(value))
    if len(out) != expected:
        raise ValueError(f"{name} has {len(out)} ids but the model has {expected} rows for them")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} contains duplicate ids (after str())")
    return out


def export_serving_arrays(
    model: EmbeddingRecommender,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    train: sp.csr_matrix | None,
    secret: bytes,
    max_k: int = DEFAULT_MAX_K,
    max_rows: int = DEFAULT_MAX_ROWS,
    interest: InterestSpace | None = None,
) -> dict[str, np.ndarray]:
    """The content of the serving ``.npz``: embeddings, item ids, hashed user keys, fallback, seen items.

    ``user_ids[u]`` / ``item_ids[i]`` are the raw ids of embedding rows ``u`` / ``i``; user ids are
    stored only as :func:`user_key` digests under ``secret`` (which is not stored). ``train``
    (``[n_users, n_items]``, any scipy sparse matrix) gives the already-seen items to exclude
    (``seen_indptr`` / ``seen_indices``, the stored non-zeros per user in CSR form) and the popularity
    order for the fallback (number of users with a non-zero entry per item; ties to the lower index).
    Without ``train`` nothing is excluded and the fallback ranks items by their score for the mean user
    embedding. ``max_k`` and ``max_rows`` are the request caps the server applies (see
    :class:`RecommenderPyfunc`). ``interest`` (the aligned per-modality item embeddings and their null,
    :class:`~mm_pipeline.explain.interest.InterestSpace`) lets explanations name the user's dominant
    modality; it needs ``train`` (the user's history).
    """
    from mm_pipeline.recommend.base import EmbeddingRecommender

    if not isinstance(model, EmbeddingRecommender):
        raise TypeError(f"model must be an EmbeddingRecommender, got {type(model).__name__}")
    items = _float32_table(model.item_embeddings.detach().cpu().float().numpy())
    if model.sparse_users:  # stored in CSR form: the user's history, as wide as the catalogue
        table = model.user_embeddings.detach().cpu()
        user_arrays = {
            "user_indptr": table.crow_indices().numpy().astype(np.int64),
            "user_indices": table.col_indices().numpy().astype(np.int64),
            "user_values": table.values().float().numpy(),
        }
        user_shape, user_values = tuple(table.shape), user_arrays["user_values"]
    else:
        users = np.ascontiguousarray(model.user_embeddings.detach().cpu().float().numpy(), dtype=np.float32)
        user_arrays, user_shape, user_values = {"user_embeddings": users}, users.shape, users
    if len(user_shape) != 2 or items.ndim != 2 or user_shape[1] != items.shape[1]:
        raise ValueError(
            f"model embeddings must be 2-D with the same width, got user_embeddings "
            f"{user_shape} and item_embeddings {items.shape}"
        )
    if items.shape[0] == 0:
        raise ValueError("model has no items")
    if not (np.isfinite(user_values).all() and np.isfinite(items).all()):
        raise ValueError("model embeddings contain NaN or infinite values")
    n_users, n_items = user_shape[0], items.shape[0]
    users_str = _ids(user_ids, "user_ids", n_users)
    items_str = _ids(item_ids, "item_ids", n_items)
    item_array = np.asarray(items_str, dtype=str)
    if item_array.tolist() != items_str:  # fixed-width unicode drops trailing NULs
        raise ValueError("item_ids must not end in NUL characters")
    secret = _secret_bytes(secret)
    for cap, value in (("max_k", max_k), ("max_rows", max_rows)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{cap} must be a positive integer, got {value!r}")

    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        **user_arrays,
        "item_embeddings": items,
        "item_ids": item_array,
        "user_keys": np.asarray([user_key(u, secret) for u in users_str], dtype="<U64"),
        "key_check": np.asarray(secret_fingerprint(secret), dtype=str),
        "max_k": np.asarray(int(max_k), dtype=np.int64),
        "max_rows": np.asarray(int(max_rows), dtype=np.int64),
    }
    order_ties = np.arange(n_items)
    if train is not None:
        import scipy.sparse as sp

        if not sp.issparse(train):
            raise TypeError(f"train must be a scipy sparse matrix or None, got {type(train).__name__}")
        if train.shape != (n_users, n_items):
            raise ValueError(f"train has shape {train.shape}, expected (n_users, n_items) = ({n_users}, {n_items})")
        seen = sp.csr_matrix(train, copy=True)
        seen.sum_duplicates()
        seen.eliminate_zeros()
        seen.sort_indices()
        arrays["seen_indptr"] = seen.indptr.astype(np.int64)
        arrays["seen_indices"] = seen.indices.astype(np.int64)
        popularity = np.bincount(seen.indices, minlength=n_items).astype(np.float64)
    else:
        if not n_users:
            mean_user = np.zeros(items.shape[1], dtype=np.float32)
        elif model.sparse_users:
            mean_user = (
                np.bincount(user_arrays["user_indices"], weights=user_values, minlength=items.shape[1]).astype(
                    np.float32
                )
                / n_users
            )
        else:
            mean_user = user_values.mean(axis=0)
        popularity = (items @ mean_user).astype(np.float64)
    arrays["popular_items"] = np.lexsort((order_ties, -popularity)).astype(np.int64)
    from mm_pipeline.recommend.base import parts_to_arrays

    arrays.update(parts_to_arrays(model.parts))
    if interest is not None:
        if train is None:
            raise ValueError("interest needs train: a user's profile is built from their training items")
        if interest.embeddings.shape[0] != n_items:
            raise ValueError(f"the interest space covers {interest.embeddings.shape[0]} items, the model {n_items}")
        arrays.update(interest.to_arrays())
    return arrays


def _pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in ("mlflow", "numpy", "pandas", "scipy")]


def _model_code() -> str:
    """This module's source plus the ``set_model`` call MLflow's models-from-code loader looks for."""
    try:
        source = Path(__file__).read_text(encoding="utf-8")
    except OSError as exc:  # e.g. a zipped / bytecode-only install
        raise RuntimeError(
            f"log_recommender needs the source of {__name__} ({__file__}) to log the model from code: {exc}"
        ) from exc
    return (
        f"{source.rstrip()}\n\n\n# Appended by mm_pipeline.registry.pyfunc.log_recommender: the model "
        f"MLflow loads.\nfrom mlflow.models import set_model  # noqa: E402\n\n"
        f"set_model(RecommenderPyfunc())\n"
    )


def log_recommender(
    model: EmbeddingRecommender,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    train: sp.csr_matrix | None,
    name: str = "model",
    registered_model_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    input_example_users: int = 3,
    secret: bytes | None = None,
    max_k: int = DEFAULT_MAX_K,
    max_rows: int = DEFAULT_MAX_ROWS,
    interest: InterestSpace | None = None,
    compression: str = "fp32",
) -> ModelInfo:
    """Log ``model`` as a :class:`RecommenderPyfunc` MLflow model in the active run.

    Builds the serving arrays (:func:`export_serving_arrays`; users keyed with ``secret``, default: the
    project's user key secret, created under the project home when there is none), writes them to a
    temporary ``.npz`` and calls ``mlflow.pyfunc.log_model(name=name, ...)`` with an explicit
    signature and pinned pip requirements (mlflow, numpy, pandas, scipy), creating an MLflow 3
    LoggedModel linked to the run, and registering a new version of ``registered_model_name`` when
    given. The input example is ``input_example_users`` rows of pseudonymous ids
    (``example-user-0``, ...; 0 for none) that no model knows, so logging exercises the fallback
    path and no real id is written. ``tags`` pass the :func:`~mm_pipeline.registry.tracking.safe_params`
    identifier filter and go to the LoggedModel (and the registered version).

    The model is logged from code (this module's source, see the module docstring): nothing is
    pickled, and loading needs MLflow, numpy and pandas but not ``mm_pipeline`` itself. ``interest``: see
    :func:`export_serving_arrays`.

    ``compression`` (one of :data:`COMPRESSIONS`) chooses how the tables are stored: ``fp32`` the plain
    format, ``fp16`` / ``int8`` / ``int4`` the compact one (:mod:`mm_pipeline.compress.artifact`).
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_recommender must be called inside an active MLflow run (mlflow.start_run())")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if registered_model_name is not None and (not isinstance(registered_model_name, str) or not registered_model_name):
        raise ValueError(f"registered_model_name must be a non-empty string or None, got {registered_model_name!r}")
    if isinstance(input_example_users, bool) or not isinstance(input_example_users, int) or input_example_users < 0:
        raise ValueError(f"input_example_users must be a non-negative integer, got {input_example_users!r}")
    if tags is not None and not isinstance(tags, Mapping):
        raise TypeError(f"tags must be a mapping or None, got {type(tags).__name__}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")

    from mm_pipeline.registry.tracking import safe_params

    if secret is None:
        from mm_pipeline.registry.user_keys import pipeline_user_key_secret

        secret = pipeline_user_key_secret()
    arrays = export_serving_arrays(
        model, user_ids, item_ids, train, secret, max_k=max_k, max_rows=max_rows, interest=interest
    )
    n_items = int(arrays["item_embeddings"].shape[0])
    model_params = {
        "recommender": model.name,
        "n_users": int(arrays["user_keys"].shape[0]),
        "n_items": n_items,
        "embedding_dim": int(arrays["item_embeddings"].shape[1]),
        "excludes_seen": "seen_indptr" in arrays,
        "max_k": int(max_k),
        "max_rows": int(max_rows),
        "compression": compression,
    }
    if compression != "fp32":
        from mm_pipeline.compress.artifact import compact_serving_arrays

        arrays = compact_serving_arrays(arrays, compression)
    model_tags = {"mm_pipeline.recommender": model.name, **safe_params(tags or {})}
    example = None
    if input_example_users:
        example = pd.DataFrame(
            {
                "user_id": [f"{EXAMPLE_USER}-{i}" for i in range(input_example_users)],
                "k": np.full(input_example_users, min(3, n_items, max_k), dtype=np.int64),
            }
        )

    with tempfile.TemporaryDirectory(prefix="mm_pipeline_serving_") as tmp:
        arrays_path = os.path.join(tmp, ARTIFACT_FILE)
        np.savez(arrays_path, **arrays)
        model_params["artifact_bytes"] = os.path.getsize(arrays_path)
        code_path = Path(tmp) / MODEL_CODE_FILE
        code_path.write_text(_model_code(), encoding="utf-8")
        with warnings.catch_warnings():
            if example is None:  # asked for: the explicit signature stands in for the example
                warnings.filterwarnings("ignore", message=".*An input example was not provided")
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=code_path,
                artifacts={ARTIFACT_KEY: arrays_path},
                signature=SIGNATURE,
                input_example=example,
                pip_requirements=_pip_requirements(),
                registered_model_name=registered_model_name,
                params=model_params,
                tags=model_tags,
            )


def register_alias(name: str, version: str | int, alias: str) -> ModelVersion:
    """Point ``alias`` (e.g. ``"champion"``) of registered model ``name`` at ``version``.

    Aliases replace MLflow 2's stages; load with ``models:/<name>@<alias>``. Returns the version
    the alias now resolves to.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if isinstance(version, bool) or not (
        isinstance(version, int)
        and version >= 1
        or isinstance(version, str)
        and version.isdigit()
        and int(version) >= 1
    ):
        raise ValueError(f"version must be a positive integer (or its string), got {version!r}")
    if (
        not isinstance(alias, str)
        or not _ALIAS.match(alias)
        or re.fullmatch(r"[vV]\d+", alias)
        or alias.lower() == "latest"
    ):
        raise ValueError(f"alias must be letters, digits, '_' or '-' and not 'latest' or 'v<number>', got {alias!r}")
    client = MlflowClient()
    client.set_registered_model_alias(name, alias, str(int(version)))
    return client.get_model_version_by_alias(name, alias)
