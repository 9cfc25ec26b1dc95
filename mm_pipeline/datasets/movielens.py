"""MovieLens, as distributed by GroupLens, read in place (the files are never modified).

Two layouts are recognised in the folder the spec points at:

* **ml-100k**: ``u.data`` (tab-separated ``user item rating timestamp``, no header) and ``u.item``
  (``|``-separated, latin-1: id, title, release date, video release date, IMDb URL, then 19 0/1 genre
  flags; genre names from ``u.genre`` when present).
* **ml-latest-small** (also ml-latest, ml-20m, ml-25m, ml-32m): ``ratings.csv``
  (``userId,movieId,rating,timestamp``), ``movies.csv`` (``movieId,title,genres`` with genres ``A|B``),
  optional ``tags.csv`` (``userId,movieId,tag,timestamp``).

Item text is ``"<title>. Genres: A, B. Tags: t1, t2"`` (the 20 most frequent distinct tags of the
movie). An optional ``posters/`` folder with ``<movieId>.jpg`` / ``.jpeg`` / ``.png`` is the image
modality. There is no audio.

Ratings become the interaction ``weight``. Implicit feedback: only ratings ``>= min_rating`` are kept
(default 4, the usual "liked it" threshold; ``min_rating=none`` keeps every rating). Optional k-core
filtering (``kcore=k``, default off) then repeatedly removes users and items with fewer than ``k``
interactions until none is left; with it, movies outside the core leave the catalogue too. Counts
before and after each step are in ``info["counts"]``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mm_pipeline.datasets.schema import DataError, RawDataset
from mm_pipeline.datasets.tables import parse_numbers, read_delimited, require_columns, require_filled

DEFAULT_MIN_RATING = 4.0
MAX_TAGS_PER_ITEM = 20
POSTER_SUFFIXES = (".jpg", ".jpeg", ".png")  # preference order when a movie has several
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
ML100K_ITEM_FIELDS = ("movie_id", "title", "release_date", "video_release_date", "imdb_url")
NO_GENRES = "(no genres listed)"


def _rating_dtypes(user: str, item: str) -> dict[str, str]:
    """Column types for the fast typed read of a ratings table (see ``read_delimited``)."""
    return {user: "int64", item: "int64", "rating": "float64", "timestamp": "int64"}


EXAMPLES = 5


@dataclass(frozen=True)
class MovieLensOptions:
    """``min_rating``: keep ratings >= this (``None`` keeps all). ``kcore``: 0 = off."""

    min_rating: float | None = DEFAULT_MIN_RATING
    kcore: int = 0


def options_from(raw: dict[str, str]) -> MovieLensOptions:
    """Options from the dataset spec (``movielens:/data/ml-100k?min_rating=3.5&kcore=5``)."""
    min_rating: float | None = DEFAULT_MIN_RATING
    if "min_rating" in raw:
        value = raw["min_rating"].strip().lower()
        if value in ("", "none", "all", "off"):
            min_rating = None
        else:
            try:
                min_rating = float(value)
            except ValueError:
                raise DataError(
                    f"movielens option min_rating={raw['min_rating']!r} is not a number; use e.g. "
                    "min_rating=4 (keep ratings >= 4) or min_rating=none (keep every rating)"
                ) from None
    kcore = 0
    if "kcore" in raw:
        try:
            kcore = int(raw["kcore"])
        except ValueError:
            kcore = -1
        if kcore < 0:
            raise DataError(f"movielens option kcore={raw['kcore']!r} must be a whole number >= 0 (0 = off)")
    return MovieLensOptions(min_rating=min_rating, kcore=kcore)


def detect_layout(root: Path) -> str:
    """``"ml-100k"`` or ``"ml-latest"``; a DataError saying what was expected otherwise."""
    if not root.is_dir():
        raise DataError(f"MovieLens folder {root} does not exist; check MM_PIPELINE_DATASET")
    has = {name: (root / name).is_file() for name in ("u.data", "u.item", "ratings.csv", "movies.csv")}
    if has["u.data"] and has["u.item"]:
        return "ml-100k"
    if has["ratings.csv"] and has["movies.csv"]:
        return "ml-latest"
    found = [n for n, ok in has.items() if ok]
    hint = ""
    subfolders = sorted(
        p.name for p in root.iterdir() if p.is_dir() and ((p / "u.data").is_file() or (p / "ratings.csv").is_file())
    )
    if subfolders:
        hint = f"; the subfolder {subfolders[0]!r} looks like one: point the spec at {root / subfolders[0]}"
    if found:
        missing = {"u.data": "u.item", "u.item": "u.data", "ratings.csv": "movies.csv", "movies.csv": "ratings.csv"}
        return_missing = sorted({missing[n] for n in found} - set(found))
        raise DataError(
            f"{root}: found {found} but not {return_missing}; a MovieLens folder needs u.data + u.item "
            f"(ml-100k) or ratings.csv + movies.csv (ml-latest-small){hint}"
        )
    raise DataError(
        f"{root}: not a MovieLens folder: expected u.data + u.item (ml-100k) or ratings.csv + "
        f"movies.csv (ml-latest-small, ml-25m, ...){hint}"
    )


# ----------------------------------------------------------------------------------------------
# The two layouts -> (movies: movie_id, title, genres (list text), extra columns; ratings)
# ----------------------------------------------------------------------------------------------
def _ratings_frame(frame: pd.DataFrame, path: Path, header: bool, columns: tuple[str, str, str, str]) -> pd.DataFrame:
    user, item, rating, ts = columns
    require_filled(frame, path, list(columns), header)
    return pd.DataFrame(
        {
            "user_id": parse_numbers(frame, user, path, header, integer=True).astype(str),
            "item_id": parse_numbers(frame, item, path, header, integer=True).astype(str),
            "rating": parse_numbers(frame, rating, path, header).astype(np.float32),
            "timestamp": parse_numbers(frame, ts, path, header, integer=True),
        }
    )


def _unique_movies(movies: pd.DataFrame, path: Path, header: bool) -> None:
    dup = movies["movie_id"].duplicated().to_numpy()
    if dup.any():
        pos = int(dup.argmax())
        line = pos + (2 if header else 1)
        raise DataError(
            f"{path}: line {line} repeats movie id {movies['movie_id'].iloc[pos]!r}; movie ids must be unique"
        )


def _read_ml100k(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    data_path, item_path = root / "u.data", root / "u.item"
    raw, blank_r = read_delimited(
        data_path,
        sep="\t",
        names=["user", "item", "rating", "timestamp"],
        quoting=csv.QUOTE_NONE,
        numeric=_rating_dtypes("user", "item"),
    )
    ratings = _ratings_frame(raw, data_path, False, ("user", "item", "rating", "timestamp"))
    genres = _ml100k_genres(root)
    names = [*ML100K_ITEM_FIELDS, *(f"genre_{i}" for i in range(len(genres)))]
    items, blank_i = read_delimited(item_path, sep="|", names=names, encoding="latin-1", quoting=csv.QUOTE_NONE)
    require_filled(items, item_path, ["movie_id", "title", *names[-len(genres) :]], header=False)
    flags = pd.DataFrame(
        {
            g: parse_numbers(items, f"genre_{i}", item_path, False, integer=True, allowed=(0, 1))
            for i, g in enumerate(genres)
        },
        index=items.index,
    ).astype(bool)
    movies = pd.DataFrame(
        {
            "movie_id": parse_numbers(items, "movie_id", item_path, False, integer=True).astype(str),
            "title": items["title"].str.strip().to_numpy(),
            "genres": _genre_lists(flags),
            "release_date": items["release_date"].fillna("").to_numpy(),
            "imdb_url": items["imdb_url"].fillna("").to_numpy(),
        }
    )
    _unique_movies(movies, item_path, header=False)
    info = {
        "files": {"ratings": str(data_path), "items": str(item_path)},
        "blank_lines": {"u.data": blank_r, "u.item": blank_i},
    }
    return movies, ratings, info


def _ml100k_genres(root: Path) -> tuple[str, ...]:
    path = root / "u.genre"
    if not path.is_file():
        return ML100K_GENRES
    frame, _ = read_delimited(path, sep="|", names=["name", "index"], encoding="latin-1", quoting=csv.QUOTE_NONE)
    require_filled(frame, path, ["name", "index"], header=False)
    order = parse_numbers(frame, "index", path, False, integer=True)
    if sorted(order.tolist()) != list(range(len(order))):
        raise DataError(f"{path}: genre indices must be 0..{len(order) - 1}, found {sorted(order.tolist())}")
    return tuple(frame["name"].to_numpy()[np.argsort(order)])


def _genre_lists(flags: pd.DataFrame) -> np.ndarray:
    """0/1 genre flags -> ``"A, B"`` per row; a loop over the (19) genre columns, not over rows."""
    joined = pd.Series("", index=flags.index, dtype=object)
    for genre in flags.columns:
        joined = joined + np.where(flags[genre].to_numpy(), genre + ", ", "")
    return joined.str.removesuffix(", ").to_numpy()


def _read_ml_latest(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    ratings_path, movies_path, tags_path = root / "ratings.csv", root / "movies.csv", root / "tags.csv"
    raw, blank_r = read_delimited(ratings_path, sep=",", numeric=_rating_dtypes("userId", "movieId"))
    require_columns(
        raw,
        ratings_path,
        ("userId", "movieId", "rating", "timestamp"),
        "ml-latest ratings.csv has the header userId,movieId,rating,timestamp",
    )
    ratings = _ratings_frame(raw, ratings_path, True, ("userId", "movieId", "rating", "timestamp"))
    items, blank_m = read_delimited(movies_path, sep=",")
    require_columns(
        items, movies_path, ("movieId", "title", "genres"), "ml-latest movies.csv has the header movieId,title,genres"
    )
    require_filled(items, movies_path, ["movieId", "title"], header=True)
    genres = items["genres"].fillna("").str.strip()
    genres = genres.where(genres != NO_GENRES, "").str.replace("|", ", ", regex=False)
    movies = pd.DataFrame(
        {
            "movie_id": parse_numbers(items, "movieId", movies_path, True, integer=True).astype(str),
            "title": items["title"].str.strip().to_numpy(),
            "genres": genres.to_numpy(),
        }
    )
    _unique_movies(movies, movies_path, header=True)
    info: dict = {
        "files": {"ratings": str(ratings_path), "items": str(movies_path)},
        "blank_lines": {"ratings.csv": blank_r, "movies.csv": blank_m},
    }
    if tags_path.is_file():
        movies, info["tags"] = _attach_tags(movies, tags_path)
        info["files"]["tags"] = str(tags_path)
    return movies, ratings, info


def _attach_tags(movies: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, dict]:
    raw, blank = read_delimited(path, sep=",")
    require_columns(raw, path, ("movieId", "tag"), "ml-latest tags.csv has the header userId,movieId,tag,timestamp")
    require_filled(raw, path, ["movieId"], header=True)
    tags = pd.DataFrame(
        {
            "movie_id": parse_numbers(raw, "movieId", path, True, integer=True).astype(str),
            "tag": raw["tag"].fillna("").str.strip().to_numpy(),
        }
    )
    empty = tags["tag"] == ""
    tags = tags[~empty]
    tags = tags.assign(key=tags["tag"].str.lower())
    counts = tags.groupby(["movie_id", "key"], sort=False).agg(tag=("tag", "first"), n=("tag", "size")).reset_index()
    counts = counts.sort_values(["movie_id", "n", "key"], ascending=[True, False, True], kind="stable")
    rank = counts.groupby("movie_id").cumcount()
    kept = counts[rank < MAX_TAGS_PER_ITEM]
    joined = kept.groupby("movie_id", sort=False)["tag"].agg(", ".join)
    known = tags["movie_id"].isin(movies["movie_id"])
    movies = movies.assign(tags=movies["movie_id"].map(joined).fillna("").to_numpy())
    unknown_ids = tags.loc[~known, "movie_id"].unique()
    return movies, {
        "rows": int(len(raw)),
        "empty_tags": int(empty.sum()),
        "blank_lines": blank,
        "distinct_per_movie_cap": MAX_TAGS_PER_ITEM,
        "tags_beyond_cap": int((rank >= MAX_TAGS_PER_ITEM).sum()),
        "rows_naming_unknown_movies": int((~known).sum()),
        "unknown_movie_examples": unknown_ids[:EXAMPLES].tolist(),
    }


# ----------------------------------------------------------------------------------------------
# Posters, filtering, assembly
# ----------------------------------------------------------------------------------------------
def _posters(root: Path, movie_ids: pd.Series) -> tuple[np.ndarray, dict]:
    """Absolute poster path per movie (or None), and what was found in ``posters/``."""
    folder = root / "posters"
    out = np.full(len(movie_ids), None, dtype=object)
    if not folder.is_dir():
        return out, {"folder": None, "reason": "no posters/ folder"}
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file() or entry.is_symlink())
    files = pd.DataFrame({"name": names})
    files["stem"] = files["name"].str.rsplit(".", n=1).str[0]
    files["suffix"] = "." + files["name"].str.rsplit(".", n=1).str[-1].str.lower()
    files.loc[~files["name"].str.contains(".", regex=False), "suffix"] = ""
    usable = files["suffix"].isin(POSTER_SUFFIXES)
    ignored = files.loc[~usable, "name"]
    files = files[usable].assign(rank=lambda f: f["suffix"].map({s: i for i, s in enumerate(POSTER_SUFFIXES)}))
    files = files.sort_values(["stem", "rank"], kind="stable")
    extra = files["stem"].duplicated()
    chosen = files[~extra].set_index("stem")["name"]
    matched = movie_ids.map(chosen)
    has = matched.notna().to_numpy()
    out[has] = [str(folder / name) for name in matched[has]]
    unmatched = chosen.index[~chosen.index.isin(movie_ids)]
    return out, {
        "folder": str(folder),
        "matched": int(has.sum()),
        "unmatched_files": int(len(unmatched)),
        "unmatched_examples": [chosen[s] for s in unmatched[:EXAMPLES]],
        "ignored_files": int(len(ignored)),
        "ignored_examples": ignored.head(EXAMPLES).tolist(),
        "ignored_reason": f"only {', '.join(POSTER_SUFFIXES)} named <movieId><suffix> are used",
        "second_choice_files": int(extra.sum()),
        "second_choice_examples": files.loc[extra, "name"].head(EXAMPLES).tolist(),
    }


def kcore_filter(interactions: pd.DataFrame, k: int) -> tuple[pd.DataFrame, int]:
    """Keep the largest subset where every user and every item has ``>= k`` interactions.

    Returns ``(filtered, rounds)``; vectorized per round (value counts), rounds until stable.
    """
    frame = interactions
    rounds = 0
    while k > 0 and len(frame):
        users = frame["user_id"].map(frame["user_id"].value_counts()).to_numpy()
        items = frame["item_id"].map(frame["item_id"].value_counts()).to_numpy()
        keep = (users >= k) & (items >= k)
        rounds += 1
        if keep.all():
            break
        frame = frame[keep]
    return frame, rounds


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    return {
        "interactions": int(len(frame)),
        "users": int(frame["user_id"].nunique()),
        "items": int(frame["item_id"].nunique()),
    }


def load_movielens(root: str | Path, options: MovieLensOptions | None = None) -> RawDataset:
    root = Path(root)
    options = options or MovieLensOptions()
    layout = detect_layout(root)
    movies, ratings, info = _read_ml100k(root) if layout == "ml-100k" else _read_ml_latest(root)

    counts = {"read": _counts(ratings), "catalogue_items": int(len(movies))}
    if options.min_rating is not None:
        liked = ratings["rating"].to_numpy() >= options.min_rating
        ratings = ratings[liked]
    counts["after_min_rating"] = _counts(ratings)
    ratings, rounds = kcore_filter(ratings, options.kcore)
    counts["after_kcore"] = _counts(ratings)
    counts["kcore_rounds"] = rounds
    if options.kcore > 0:
        in_core = movies["movie_id"].isin(ratings["item_id"])
        counts["catalogue_items_removed_by_kcore"] = int((~in_core).sum())
        movies = movies[in_core]
    counts["catalogue_items_kept"] = int(len(movies))
    unknown = ~ratings["item_id"].isin(movies["movie_id"])
    counts["interactions_naming_unknown_movies"] = int(unknown.sum())

    text = movies["title"].fillna("")
    text = text + np.where(movies["genres"] != "", ". Genres: " + movies["genres"], "")
    if "tags" in movies:
        text = text + np.where(movies["tags"] != "", ". Tags: " + movies["tags"], "")
    images, posters = _posters(root, movies["movie_id"])
    items = movies.rename(columns={"movie_id": "item_id"}).assign(text=text.to_numpy(), image=images, audio=None)
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    interactions = pd.DataFrame(
        {
            "user_id": ratings["user_id"].to_numpy(),
            "item_id": ratings["item_id"].to_numpy(),
            "timestamp": ratings["timestamp"].to_numpy(np.int64),
            "weight": ratings["rating"].to_numpy(np.float32),
        }
    )
    has_image = bool(posters.get("matched"))
    modalities = ("text", "image") if has_image else ("text",)
    skipped = {"audio": "MovieLens has no audio"}
    if not has_image:
        skipped["image"] = (
            posters["reason"]
            if posters["folder"] is None
            else "no file in posters/ is named <movieId>.jpg|.jpeg|.png for a catalogue movie"
        )
    info.update(
        {
            "format": "movielens",
            "layout": layout,
            "options": asdict(options),
            "counts": counts,
            "posters": posters,
            "skipped_modalities": skipped,
            "text": "title. Genres: ... . Tags: ... (tags: ml-latest tags.csv only)",
        }
    )
    return RawDataset(
        name=root.name, root=root, items=items, interactions=interactions, modalities=modalities, info=info
    )
