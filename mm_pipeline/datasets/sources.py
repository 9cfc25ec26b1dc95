"""Dataset specs -> loaded data.

``builtin:default``, ``builtin:tiny:ecommerce``  the generated dataset
``folder:/data/shop?bad_rows=quarantine``      the project's folder format (:mod:`.folder`)
``movielens:/data/ml-100k?min_rating=4&kcore=5``  MovieLens ml-100k or ml-latest(-small) (:mod:`.movielens`)
``mmrec:/data/baby``                           the MMRec layout with precomputed features (:mod:`.mmrec`)
``builtin-mmrec:baby``                         a generated stand-in in the MMRec layout (:mod:`.synthetic_mmrec`)

Options follow the path after a ``?`` as ``key=value`` pairs joined by ``&``; each format lists the
options it understands and refuses the others.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from mm_pipeline.datasets import synthetic, synthetic_mmrec
from mm_pipeline.datasets.folder import folder_options, load_folder
from mm_pipeline.datasets.schema import DataError, RawDataset

KINDS = ("builtin", "builtin-mmrec", "folder", "movielens", "mmrec")
OPTIONS = {
    "builtin": (),
    "builtin-mmrec": (),
    "folder": ("bad_rows", "encoding"),
    "movielens": ("min_rating", "kcore"),
    "mmrec": ("name",),
}


@dataclass(frozen=True)
class Source:
    kind: str  # "builtin" | "folder" | "movielens" | "mmrec"
    root: Path
    description: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def option_dict(self) -> dict[str, str]:
        return dict(self.options)


def _split_options(kind: str, rest: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    path, sep, query = rest.partition("?")
    if not sep:
        return path, ()
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise DataError(f"dataset spec options {query!r} are not key=value pairs joined by '&'") from exc
    unknown = sorted({k for k, _ in pairs} - set(OPTIONS[kind]))
    if unknown:
        allowed = ", ".join(OPTIONS[kind]) or "none"
        raise DataError(f"dataset spec option(s) {unknown} are not understood by '{kind}:' (options: {allowed})")
    return path, tuple(pairs)


def resolve_source(spec: str, data_dir: str | Path, seed: int = 0) -> Source:
    """Turn a dataset spec into a folder on disk, generating the built-in dataset when asked for."""
    kind, _, rest = spec.partition(":")
    if kind == "builtin":
        size, _, scenario = (rest or "default").partition(":")
        gen_spec = synthetic.spec_for(size, scenario or "video", seed=seed)
        root = Path(data_dir) / "builtin" / f"{size}-{gen_spec.scenario}-seed{seed}"
        synthetic.generate(gen_spec, root)
        return Source("builtin", root, f"built-in {size} ({gen_spec.scenario}), seed {seed}")
    if kind == "builtin-mmrec":
        size = rest or "baby"
        try:
            gen_spec = synthetic_mmrec.spec_for(size, seed=seed)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        root = Path(data_dir) / "builtin-mmrec" / f"{size}-seed{seed}"
        synthetic_mmrec.generate_mmrec_like(gen_spec, root, name=size)
        # Read back exactly as a user's MMRec folder is: same loader, same published-split contract.
        return Source("mmrec", root, f"built-in MMRec-like {size}, seed {seed}")
    if kind in ("folder", "movielens", "mmrec"):
        path, options = _split_options(kind, rest)
        if not path:
            raise DataError(
                f"dataset spec '{kind}:' needs a path, e.g. {kind}:/data/"
                + {"folder": "shop", "movielens": "ml-100k", "mmrec": "baby"}[kind]
            )
        shown = "".join(f"&{k}={v}" for k, v in options).replace("&", "?", 1)
        return Source(kind, Path(path).expanduser().resolve(), f"{kind} {path}{shown}", options)
    raise DataError(
        f"unknown dataset spec {spec!r}; use builtin:<tiny|default|large>[:scenario], "
        "builtin-mmrec:<small|baby>, folder:<path>, movielens:<path> or mmrec:<path>"
    )


def load_source(source: Source, text_columns: tuple[str, ...] | None = None) -> RawDataset:
    if source.kind == "movielens":
        from mm_pipeline.datasets.movielens import load_movielens, options_from

        return load_movielens(source.root, options_from(source.option_dict))
    if source.kind == "mmrec":
        from mm_pipeline.datasets.mmrec import load_mmrec

        return load_mmrec(source.root, name=source.option_dict.get("name") or None)
    return load_folder(source.root, text_columns=text_columns, **folder_options(source.option_dict))


# Bump when what the fingerprint covers changes (it is the source's data version: a new one re-reads every source).
FINGERPRINT_VERSION = "1"


def source_fingerprint(spec: str, source: Source, seed: int = 0) -> str:
    """A content hash of the source as the pipeline reads it: the spec, the seed, and every file under the
    source's folder (its path relative to the folder and its bytes; hidden names, such as the staging
    folders of an interrupted write, are left out). Equal exactly when a run would read the same data, so
    an edited, added or removed file, or another spec or seed, changes it. Reads every byte once (about
    a second per few hundred MB); a spec that names a single file hashes that file."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{FINGERPRINT_VERSION}\x00{spec}\x00{seed}\x00{source.kind}\x00{source.options}".encode())
    root = Path(source.root)
    files = [root] if root.is_file() else sorted(_source_files(root))
    for path in files:
        digest.update(f"\x00{path.relative_to(root).as_posix() if path != root else path.name}\x00".encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _source_files(root: Path):
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                yield Path(folder) / name
