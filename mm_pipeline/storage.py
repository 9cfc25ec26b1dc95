"""Bundles: how pipeline values are stored on disk, without pickle.

A *bundle* is a ``dict[str, value]`` where each value is one of

* a ``pandas.DataFrame``            -> ``<key>.parquet``
* a ``numpy.ndarray`` / ``torch.Tensor`` -> ``<key>.npy`` (loaded back as ``numpy.ndarray``)
* a ``dict[str, array]`` (e.g. a state dict) -> ``<key>.npz`` (loaded back as ``dict[str, ndarray]``)
* anything JSON-serialisable        -> ``manifest.json``

Writes are atomic: the bundle is written to a temporary sibling folder and renamed into place, so a
crash never leaves a half-written asset behind. Loading never unpickles (``allow_pickle=False``).

**Versions.** Values that many runs write at once (the Dagster assets) are stored as *versions* of a
*slot* folder: ``<slot>/versions/<version>/`` is one bundle, written once (:func:`save_version`), and
``<slot>/LATEST`` names the published one (:func:`publish_version`, an atomic replace of one small
file). A reader that knows which version it wants (its own run's) asks for it; others get the
published one; :func:`load_bundle` on the slot folder does the latter, so notebooks and benchmarks
that read ``<home>/assets/<asset>`` keep working. Paths may be local or any ``fsspec`` URI
(``s3://``, ``gs://``, ``memory://``, through ``universal_pathlib``): where there is no rename (object
stores) a bundle's files are written first and its manifest last, and a folder without a manifest
is never read. Leftovers of killed writes (``.<name>.tmp-*``, ``.<name>.old-*``) are never read and
:func:`clean_leftovers` removes them once they are old enough not to belong to a live writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
POINTER = "LATEST"
VERSIONS = "versions"
LEFTOVER_PATTERN = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{32}$")
# A write takes seconds to minutes; a leftover older than this has no live writer.
LEFTOVER_GRACE_S = 6 * 3600.0


def as_path(path: Any):
    """``path`` as a ``pathlib.Path`` when it is local, else a ``upath.UPath`` (``s3://...``, ``memory://...``)."""
    if isinstance(path, Path):
        return path
    text = str(path)
    if "://" in text and not text.startswith("file://"):
        from upath import UPath

        return UPath(text)
    return Path(text.removeprefix("file://"))


def is_local(path: Any) -> bool:
    """Whether ``path`` is on a local (or mounted shared) filesystem, where a rename is atomic."""
    from upath import UPath

    return isinstance(path, Path) and (not isinstance(path, UPath) or path.protocol in ("", "file", "local"))


def _to_numpy(value: Any) -> np.ndarray | None:
    if isinstance(value, np.ndarray):
        return value
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return None


def _check_array(key: str, array: np.ndarray) -> np.ndarray:
    if array.dtype == object:
        raise TypeError(
            f"bundle entry {key!r}: object arrays cannot be stored without pickle; "
            "convert to a fixed-width string or numeric dtype"
        )
    return array


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _write_entries(folder, bundle: dict[str, Any]) -> None:
    """Every entry of ``bundle`` as a file in ``folder``, the manifest last (it marks the bundle complete)."""
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "arrays": [],
        "tables": [],
        "array_dicts": [],
        "values": {},
        "written_at": time.time(),
    }
    for key, value in bundle.items():
        if "/" in key or key.startswith("."):
            raise ValueError(f"bundle key {key!r} must be a plain name")
        array = _to_numpy(value)
        if isinstance(value, pd.DataFrame):
            with (folder / f"{key}.parquet").open("wb") as f:
                value.to_parquet(f, index=False)
            manifest["tables"].append(key)
        elif array is not None:
            with (folder / f"{key}.npy").open("wb") as f:
                np.save(f, _check_array(key, array), allow_pickle=False)
            manifest["arrays"].append(key)
        elif isinstance(value, dict) and value and all(_to_numpy(v) is not None for v in value.values()):
            arrays = {k: _check_array(f"{key}.{k}", _to_numpy(v)) for k, v in value.items()}
            with (folder / f"{key}.npz").open("wb") as f:
                np.savez(f, **arrays)
            manifest["array_dicts"].append(key)
        else:
            manifest["values"][key] = value
    text = json.dumps(manifest, indent=1, default=_json_default)  # fails before anything is committed
    (folder / MANIFEST).write_text(text)


def bundle_digest(bundle: dict[str, Any]) -> str:
    """A content hash of ``bundle`` (32 hex digits): equal for bundles that store the same values, whatever
    the order of their keys or when they were written. Tables hash their column names, dtypes and cells,
    arrays their dtype, shape and bytes, other entries their JSON text."""
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(bundle):
        digest.update(f"\x00{key}\x00".encode())
        _digest_entry(digest, bundle[key])
    return digest.hexdigest()


def _digest_entry(digest, value: Any) -> None:
    array = _to_numpy(value)
    if isinstance(value, pd.DataFrame):
        digest.update(f"table{list(map(str, value.columns))}{len(value)}".encode())
        for name in value.columns:
            _digest_column(digest, value[name])
    elif array is not None:
        _digest_array(digest, array)
    elif isinstance(value, dict) and value and all(_to_numpy(v) is not None for v in value.values()):
        for key in sorted(value):
            digest.update(f"\x01{key}".encode())
            _digest_array(digest, _to_numpy(value[key]))
    else:
        try:
            text = json.dumps(value, sort_keys=True, default=_json_default)
        except TypeError:  # keys of mixed types cannot be sorted
            text = json.dumps(value, default=_json_default)
        digest.update(f"json{text}".encode())


DIGEST_BLOCK_BYTES = 64 << 20  # a non-contiguous array is hashed in row blocks of this size


def _digest_array(digest, array: np.ndarray) -> None:
    digest.update(f"array{array.dtype.str}{array.shape}".encode())
    if array.dtype == object:
        digest.update(json.dumps(array.tolist(), default=str).encode())
    elif array.flags.c_contiguous or array.ndim < 2:
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    else:
        # The bytes of the C-ordered array (the same digest), a block of rows at a time: a transposed item-item
        # table is 1.6 GB at 20k items, and copying it whole only to hash it raised the step's peak by as much.
        rows = max(1, DIGEST_BLOCK_BYTES // max(1, array[:1].nbytes))
        for start in range(0, array.shape[0], rows):
            digest.update(memoryview(np.ascontiguousarray(array[start : start + rows])).cast("B"))


def _digest_column(digest, column: pd.Series) -> None:
    digest.update(f"column{column.dtype}".encode())
    values = column.to_numpy()
    if isinstance(values, np.ndarray) and values.dtype != object:
        _digest_array(digest, values)
        return
    try:  # strings, categories, mixed objects: one 64-bit hash per cell, with a fixed key
        digest.update(pd.util.hash_pandas_object(column, index=False).to_numpy().tobytes())
    except TypeError:  # unhashable cells (lists, dicts)
        digest.update(json.dumps(column.tolist(), default=str).encode())


def save_bundle(path: Any, bundle: dict[str, Any]) -> Path:
    """Write ``bundle`` to the folder ``path`` atomically and return ``path``.

    Local paths: written to a temporary sibling folder and renamed into place (an existing bundle is
    replaced). Object-store URIs have no rename: the files go straight into ``path``, the manifest
    last, so use them for folders written once (:func:`save_version`)."""
    path = as_path(path)
    if not is_local(path):
        path.mkdir(parents=True, exist_ok=True)
        _write_entries(path, bundle)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_entries(tmp, bundle)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace_dir(src: Path, dst: Path) -> None:
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------- versions
def _check_version_name(version: str) -> str:
    if not isinstance(version, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", version):
        raise ValueError(f"version must be a plain name (letters, digits, '_', '-'), got {version!r}")
    return version


def version_path(slot: Any, version: str):
    return as_path(slot) / VERSIONS / _check_version_name(version)


def save_version(slot: Any, version: str, bundle: dict[str, Any]):
    """Write ``bundle`` as version ``version`` of ``slot`` (``<slot>/versions/<version>/``), atomically;
    not published: readers of the slot see it only after :func:`publish_version`."""
    return save_bundle(version_path(slot, version), bundle)


def publish_version(slot: Any, version: str) -> None:
    """Point ``<slot>/LATEST`` at ``version``: one small file replaced atomically (a rename locally,
    one object put on an object store), so a reader sees the old or the new version, never a mix."""
    slot = as_path(slot)
    if not (version_path(slot, version) / MANIFEST).exists():
        raise FileNotFoundError(f"{version_path(slot, version)} holds no complete bundle; save it before publishing")
    text = json.dumps({"version": version, "published_at": time.time()})
    if is_local(slot):
        atomic_write_text(slot / POINTER, text)
    else:
        (slot / POINTER).write_text(text)


def published_version(slot: Any) -> str | None:
    """The version ``<slot>/LATEST`` names, or ``None`` when nothing was published."""
    pointer = as_path(slot) / POINTER
    try:
        return str(json.loads(pointer.read_text())["version"])
    except FileNotFoundError:
        return None


def stored_versions(slot: Any) -> dict[str, float]:
    """``{version: written_at}`` of every complete version of ``slot`` (leftovers and incomplete ones skipped)."""
    folder = as_path(slot) / VERSIONS
    out: dict[str, float] = {}
    if not folder.exists():
        return out
    for child in folder.iterdir():
        if child.name.startswith("."):
            continue
        try:
            out[child.name] = float(json.loads((child / MANIFEST).read_text()).get("written_at", 0.0))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            continue
    return out


def prune_versions(slot: Any, keep: int, in_use: Callable[[str], bool] = lambda version: False) -> list[str]:
    """Delete all but the ``keep`` newest versions of ``slot``, never the published one nor one
    ``in_use(version)`` says a running writer or reader still needs. Returns the versions deleted."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    versions = stored_versions(slot)
    protected = {published_version(slot)}
    old = sorted(versions, key=versions.get, reverse=True)[keep:]
    deleted = []
    for version in old:
        if version in protected or in_use(version):
            continue
        _remove_tree(version_path(slot, version))
        deleted.append(version)
    return deleted


def prune_run_folders(folder: Any, keep: int, in_use: Callable[[str], bool] = lambda run_id: False) -> list[str]:
    """Delete all but the ``keep`` most recently modified sub-folders of ``folder`` (one per run, e.g.
    the run-scoped outputs of plain ops), never one ``in_use(name)``. Returns the names deleted."""
    folder = as_path(folder)
    if not folder.exists():
        return []
    children = [c for c in folder.iterdir() if not c.name.startswith(".") and c.is_dir()]
    if len(children) <= keep:
        return []
    modified = {
        c.name: (c.stat().st_mtime if is_local(c) else float(c.fs.info(c.path).get("mtime", 0) or 0)) for c in children
    }
    deleted = []
    for name in sorted(modified, key=modified.get, reverse=True)[keep:]:
        if not in_use(name):
            _remove_tree(folder / name)
            deleted.append(name)
    return deleted


def remove_tree(path) -> None:
    """Delete the folder ``path`` (local: renamed away first, so no reader sees it half deleted)."""
    _remove_tree(path)


def _remove_tree(path) -> None:
    if is_local(path):
        # Renamed away first, so no reader ever sees a half-deleted version under its own name.
        doomed = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
        try:
            os.replace(path, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        path.fs.rm(path.path, recursive=True)


def clean_leftovers(root: Any, older_than_s: float = LEFTOVER_GRACE_S) -> list[Path]:
    """Remove ``.<name>.tmp-<hex>`` / ``.<name>.old-<hex>`` folders and files under the local folder
    ``root`` that were last modified more than ``older_than_s`` seconds ago: what a killed write left
    behind (no reader ever opens them; a younger one may still belong to a live writer). Returns
    what was removed."""
    root = as_path(root)
    if not is_local(root) or not root.is_dir():
        return []
    cutoff, removed = time.time() - older_than_s, []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if not LEFTOVER_PATTERN.match(name):
                continue
            path = Path(folder) / name
            try:
                if path.lstat().st_mtime > cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
            except FileNotFoundError:  # another cleaner got there first
                continue
        dirs[:] = [d for d in dirs if not LEFTOVER_PATTERN.match(d)]
    return removed


def _bundle_folder(path: Any, version: str | None) -> Any:
    """The folder holding the bundle of ``path`` (see :func:`load_bundle`)."""
    path = as_path(path)
    if version is not None:
        folder = version_path(path, version)
        if not (folder / MANIFEST).exists():
            raise FileNotFoundError(
                f"{path} has no stored version {version!r} (never written, or pruned: only the "
                "newest versions are kept); re-materialize the asset that writes it"
            )
        return folder
    if (path / MANIFEST).exists():
        return path
    published = published_version(path)
    if published is None:
        raise FileNotFoundError(
            f"{path} is not a stored bundle (no {MANIFEST}); re-materialize the asset that writes it"
        )
    return version_path(path, published)


def _read_array(folder: Any, key: str) -> np.ndarray:
    with (folder / f"{key}.npy").open("rb") as f:
        return np.load(f, allow_pickle=False)


def _read_array_dict(folder: Any, key: str) -> dict[str, np.ndarray]:
    with (folder / f"{key}.npz").open("rb") as f, np.load(f, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def load_bundle(path: Any, version: str | None = None, fields: Collection[str] | None = None) -> dict[str, Any]:
    """The bundle in the folder ``path``; for a slot of versions, ``version`` (or, when it is
    ``None``, the published one). With ``fields``, only those of its keys are read (a model bundle's
    metadata without its tables, say)."""
    folder = _bundle_folder(path, version)
    manifest = json.loads((folder / MANIFEST).read_text())
    wanted = (lambda key: True) if fields is None else set(fields).__contains__
    out: dict[str, Any] = {k: v for k, v in manifest["values"].items() if wanted(k)}
    for key in filter(wanted, manifest["tables"]):
        with (folder / f"{key}.parquet").open("rb") as f:
            out[key] = pd.read_parquet(f)
    for key in filter(wanted, manifest["arrays"]):
        out[key] = _read_array(folder, key)
    for key in filter(wanted, manifest["array_dicts"]):
        out[key] = _read_array_dict(folder, key)
    return out


class StoredBundle(Mapping[str, Any]):
    """A stored bundle read as it is used: its values and tables when opened, each array (or dict of
    arrays) from disk every time it is looked up, never kept. A reader that holds many bundles, each
    turned into a model and dropped in turn (the report over every model), holds one model's tables at
    a time (on a 20k-item catalogue each item-item model is 1.6 GB)."""

    def __init__(self, path: Any, version: str | None = None):
        self._folder = _bundle_folder(path, version)
        manifest = json.loads((self._folder / MANIFEST).read_text())
        self._loaded = load_bundle(self._folder, fields=[*manifest["values"], *manifest["tables"]])
        self._readers = {
            **{key: _read_array for key in manifest["arrays"]},
            **{key: _read_array_dict for key in manifest["array_dicts"]},
        }

    def __getitem__(self, key: str) -> Any:
        if key in self._loaded:
            return self._loaded[key]
        return self._readers[key](self._folder, key)

    def __contains__(self, key: object) -> bool:  # Mapping's default would read the array
        return key in self._loaded or key in self._readers

    def __iter__(self):
        return iter([*self._loaded, *self._readers])

    def __len__(self) -> int:
        return len(self._loaded) + len(self._readers)


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def point_link(link: str | Path, target: str | Path) -> Path:
    """Make ``link`` a symbolic link to the folder ``target`` (relative when they share a parent),
    swapped in with one rename, so a reader following ``link`` sees all of the old target or all of the
    new one. A real folder found at ``link`` (an older layout) is moved aside and removed first."""
    link, target = Path(link), Path(target)
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        destination = os.path.relpath(target, link.parent)
    except ValueError:  # another drive
        destination = str(target.resolve())
    if link.is_dir() and not link.is_symlink():
        old = link.parent / f".{link.name}.old-{uuid.uuid4().hex}"
        os.replace(link, old)
        shutil.rmtree(old, ignore_errors=True)
    tmp = link.parent / f".{link.name}.tmp-{uuid.uuid4().hex}"
    os.symlink(destination, tmp, target_is_directory=True)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return link
