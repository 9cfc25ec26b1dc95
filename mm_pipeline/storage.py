"""Bundles: how pipeline values are stored on disk, without pickle.

A *bundle* is a ``dict[str, value]`` where each value is one of

* a ``pandas.DataFrame``            -> ``<key>.parquet``
* a ``numpy.ndarray`` / ``torch.Tensor`` -> ``<key>.npy`` (loaded back as ``numpy.ndarray``)
* a ``dict[str, array]`` (e.g. a state dict) -> ``<key>.npz`` (loaded back as ``dict[str, ndarray]``)
* anything JSON-serialisable        -> ``manifest.json``

Writes are atomic: the bundle is written to a temporary sibling folder and renamed into place, so a
crash never leaves a half-written asset behind. Loading never unpickles (``allow_pickle=False``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
        raise TypeError(f"bundle entry {key!r}: object arrays cannot be stored without pickle; "
                        "convert to a fixed-width string or numeric dtype")
    return array


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def save_bundle(path: str | Path, bundle: dict[str, Any]) -> Path:
    """Write ``bundle`` to the folder ``path`` atomically and return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        manifest: dict[str, Any] = {"format": FORMAT_VERSION, "arrays": [], "tables": [],
                                    "array_dicts": [], "values": {}}
        for key, value in bundle.items():
            if "/" in key or key.startswith("."):
                raise ValueError(f"bundle key {key!r} must be a plain name")
            array = _to_numpy(value)
            if isinstance(value, pd.DataFrame):
                value.to_parquet(tmp / f"{key}.parquet", index=False)
                manifest["tables"].append(key)
            elif array is not None:
                np.save(tmp / f"{key}.npy", _check_array(key, array), allow_pickle=False)
                manifest["arrays"].append(key)
            elif isinstance(value, dict) and value and all(_to_numpy(v) is not None for v in value.values()):
                arrays = {k: _check_array(f"{key}.{k}", _to_numpy(v)) for k, v in value.items()}
                np.savez(tmp / f"{key}.npz", **arrays)
                manifest["array_dicts"].append(key)
            else:
                manifest["values"][key] = value
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default))
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


def load_bundle(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{path} is not a stored bundle (no {MANIFEST}); "
                                "re-materialize the asset that writes it")
    manifest = json.loads(manifest_path.read_text())
    out: dict[str, Any] = dict(manifest["values"])
    for key in manifest["tables"]:
        out[key] = pd.read_parquet(path / f"{key}.parquet")
    for key in manifest["arrays"]:
        out[key] = np.load(path / f"{key}.npy", allow_pickle=False)
    for key in manifest["array_dicts"]:
        with np.load(path / f"{key}.npz", allow_pickle=False) as npz:
            out[key] = {k: npz[k] for k in npz.files}
    return out


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
