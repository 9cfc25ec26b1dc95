"""Data validation as Dagster asset checks on the raw tables and decoded media.

Blocking checks (``blocking=True``, ERROR) guard what the rest of the graph cannot work with: a
broken schema and an empty interaction table. When one fails, the assets downstream of the checked
asset do not run. The others are warnings (WARN): the pipeline copes (duplicates keep their first
occurrence, unknown items are ignored, bad media and, under ``bad_rows=quarantine``, bad table rows
are quarantined), but the check makes the problem visible with counts and a few examples in its metadata.
"""

from __future__ import annotations

import time

import dagster as dg
import numpy as np
import pandas as pd

from mm_pipeline.defs.metadata import frame_table, without_user_ids

EXAMPLES = 5
#: Plausible interaction times: from 1990-01-01 to one day after the check runs.
EARLIEST_PLAUSIBLE = 631_152_000
FUTURE_SLACK_S = 86_400

ITEM_SCHEMA = {"item_id": "string", "text": "string", "image": "path or empty", "audio": "path or empty"}
INTERACTION_SCHEMA = {"user_id": "string", "item_id": "string", "timestamp": "int64 seconds", "weight": "float"}
WARN = dg.AssetCheckSeverity.WARN


def _examples(frame: pd.DataFrame, n: int = EXAMPLES) -> dg.MetadataValue:
    """The first ``n`` rows as a table for the check's metadata, with their row in ``raw_interactions``.
    Raw user ids never reach Dagster metadata: a keyed hash (``user_key``) stands in."""
    shown = frame.head(n)
    if "user_id" in shown.columns:
        shown = without_user_ids(shown.rename_axis("row").reset_index())
    return frame_table(shown, n)


def _is_strings(series: pd.Series, allow_missing: bool) -> bool:
    kind = pd.api.types.infer_dtype(series, skipna=True)
    if kind not in ("string", "empty"):
        return False
    return allow_missing or not series.isna().any()


def _schema_result(
    frame: pd.DataFrame, expected: dict[str, str], problems: list[str], what: str
) -> dg.AssetCheckResult:
    dtypes = {c: str(t) for c, t in frame.dtypes.items()}
    return dg.AssetCheckResult(
        passed=not problems,
        description=(
            f"{what} matches the schema"
            if not problems
            else f"{what} does not match the schema: " + "; ".join(problems)
        ),
        metadata={
            "problems": len(problems),
            "details": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            "expected": dg.MetadataValue.json(expected),
            "dtypes": dg.MetadataValue.json(dtypes),
            "rows": len(frame),
        },
    )


@dg.asset_check(
    asset="raw_items",
    blocking=True,
    description="raw_items has at least one item and item_id (unique, non-empty strings), text "
    "(strings), image and audio (paths or empty). Blocking: downstream assets index "
    "items by these columns.",
)
def raw_items_schema(raw_items: pd.DataFrame) -> dg.AssetCheckResult:
    problems = [f"missing column {c!r}" for c in ITEM_SCHEMA if c not in raw_items.columns]
    if len(raw_items) == 0:
        problems.append("the catalogue is empty (if the source filters items, e.g. a MovieLens k-core, relax it)")
    if "item_id" in raw_items.columns:
        ids = raw_items["item_id"]
        if not _is_strings(ids, allow_missing=False):
            problems.append(
                f"item_id must be non-empty strings, found {pd.api.types.infer_dtype(ids)} "
                f"({int(ids.isna().sum())} missing)"
            )
        else:
            dup = ids[ids.duplicated()]
            if len(dup):
                problems.append(f"{len(dup)} repeated item_id(s), e.g. {dup.head(EXAMPLES).tolist()}")
            if (ids.str.strip() == "").any():
                problems.append(f"{int((ids.str.strip() == '').sum())} empty item_id(s)")
    if "text" in raw_items.columns and not _is_strings(raw_items["text"], allow_missing=False):
        problems.append(
            f"text must be strings (empty when an item has none), found {pd.api.types.infer_dtype(raw_items['text'])}"
        )
    for column in ("image", "audio"):
        if column in raw_items.columns and not _is_strings(raw_items[column], allow_missing=True):
            found = pd.api.types.infer_dtype(raw_items[column])
            problems.append(f"{column} must be file paths or empty, found {found}")
    return _schema_result(raw_items, ITEM_SCHEMA, problems, "raw_items")


@dg.asset_check(
    asset="raw_interactions",
    blocking=True,
    description="raw_interactions has user_id and item_id (strings), timestamp (integer seconds) "
    "and weight (finite floats). Blocking: the split and every model read them.",
)
def raw_interactions_schema(raw_interactions: pd.DataFrame) -> dg.AssetCheckResult:
    frame = raw_interactions
    problems = [f"missing column {c!r}" for c in INTERACTION_SCHEMA if c not in frame.columns]
    for column in ("user_id", "item_id"):
        if column in frame.columns and not _is_strings(frame[column], allow_missing=False):
            problems.append(
                f"{column} must be non-empty strings, found {pd.api.types.infer_dtype(frame[column])} "
                f"({int(frame[column].isna().sum())} missing)"
            )
    if "timestamp" in frame.columns and not pd.api.types.is_integer_dtype(frame["timestamp"]):
        problems.append(f"timestamp must be integer seconds since the epoch, found dtype {frame['timestamp'].dtype}")
    if "weight" in frame.columns:
        if not pd.api.types.is_float_dtype(frame["weight"]):
            problems.append(f"weight must be floats, found dtype {frame['weight'].dtype}")
        else:
            bad = ~np.isfinite(frame["weight"].to_numpy(np.float64))
            if bad.any():
                problems.append(f"{int(bad.sum())} weight(s) are NaN or infinite")
    return _schema_result(frame, INTERACTION_SCHEMA, problems, "raw_interactions")


@dg.asset_check(
    asset="raw_interactions",
    blocking=True,
    additional_ins={"source_dataset": dg.AssetIn("source_dataset")},
    description="At least one interaction. Blocking: nothing can be trained or evaluated without.",
)
def raw_interactions_not_empty(raw_interactions: pd.DataFrame, source_dataset: dict) -> dg.AssetCheckResult:
    n = len(raw_interactions)
    counts = (source_dataset.get("info") or {}).get("counts") or {}
    hint = ""
    if n == 0 and counts:
        hint = (
            f" The source read {counts.get('read', {}).get('interactions', '?')} interaction(s) and its filters "
            f"left none (counts: {counts}); relax them in the dataset spec (e.g. ?min_rating=none or kcore=0)."
        )
    return dg.AssetCheckResult(
        passed=n > 0,
        description=(f"{n} interactions" if n else "raw_interactions is empty: nothing to train on." + hint),
        metadata={
            "interactions": n,
            "users": int(raw_interactions["user_id"].nunique()) if n else 0,
            **({"source_counts": dg.MetadataValue.json(counts)} if counts else {}),
        },
    )


@dg.asset_check(
    asset="raw_interactions",
    description="Repeated (user, item) pairs. interaction_split keeps each pair's earliest interaction.",
)
def raw_interactions_duplicates(raw_interactions: pd.DataFrame) -> dg.AssetCheckResult:
    repeated = raw_interactions.duplicated(["user_id", "item_id"], keep="first")
    involved = raw_interactions.duplicated(["user_id", "item_id"], keep=False)
    examples = raw_interactions[involved].sort_values(["user_id", "item_id", "timestamp"], kind="stable")
    n = int(repeated.sum())
    return dg.AssetCheckResult(
        passed=n == 0,
        severity=WARN,
        description=(
            "no repeated (user, item) pairs"
            if n == 0
            else f"{n} interaction(s) repeat an earlier (user, item) pair; the split keeps the earliest of "
            "each pair. Deduplicate the source if repeats are not meaningful."
        ),
        metadata={
            "duplicate_rows": n,
            "pairs_repeated": int(examples[["user_id", "item_id"]].drop_duplicates().shape[0]),
            "examples": _examples(examples),
        },
    )


@dg.asset_check(
    asset="raw_interactions",
    additional_ins={"raw_items": dg.AssetIn("raw_items")},
    description="Interactions naming items missing from the catalogue; interaction_split ignores them.",
)
def raw_interactions_known_items(raw_interactions: pd.DataFrame, raw_items: pd.DataFrame) -> dg.AssetCheckResult:
    unknown = ~raw_interactions["item_id"].isin(raw_items["item_id"])
    n = int(unknown.sum())
    ids = raw_interactions.loc[unknown, "item_id"].value_counts()
    return dg.AssetCheckResult(
        passed=n == 0,
        severity=WARN,
        description=(
            "every interaction names a catalogue item"
            if n == 0
            else f"{n} interaction(s) name {len(ids)} item id(s) missing from the catalogue; they are not used. "
            "Add those items to the catalogue or remove the rows."
        ),
        metadata={
            "unknown_item_interactions": n,
            "unknown_item_ids": int(len(ids)),
            "share": float(n / max(len(raw_interactions), 1)),
            "examples": _examples(ids.rename("interactions").rename_axis("item_id").reset_index()),
        },
    )


@dg.asset_check(
    asset="raw_interactions",
    description="Timestamps before 1990-01-01 or in the future (more than a day after the check ran) "
    "are probably wrong units (milliseconds?) or placeholders.",
)
def raw_interactions_timestamps_plausible(raw_interactions: pd.DataFrame) -> dg.AssetCheckResult:
    ts = raw_interactions["timestamp"].to_numpy(np.int64)
    latest = int(time.time()) + FUTURE_SLACK_S
    early, late = ts < EARLIEST_PLAUSIBLE, ts > latest
    bad = early | late
    hint = ""
    if late.any() and np.median(ts[late]) > 1e11:
        hint = " They look like milliseconds; divide by 1000."
    return dg.AssetCheckResult(
        passed=not bad.any(),
        severity=WARN,
        description=(
            "all timestamps between 1990-01-01 and now"
            if not bad.any()
            else f"{int(early.sum())} timestamp(s) before 1990-01-01 and {int(late.sum())} in the future; the "
            "chronological split orders by them." + hint
        ),
        metadata={
            "before_1990": int(early.sum()),
            "in_future": int(late.sum()),
            "min": int(ts.min()) if len(ts) else 0,
            "max": int(ts.max()) if len(ts) else 0,
            "examples": _examples(raw_interactions[bad]),
        },
    )


@dg.asset_check(
    asset="raw_items",
    additional_ins={
        "raw_item_text": dg.AssetIn("raw_item_text"),
        "raw_item_images": dg.AssetIn("raw_item_images"),
        "raw_item_audio": dg.AssetIn("raw_item_audio"),
        "source_dataset": dg.AssetIn("source_dataset"),
    },
    description="Items with no usable modality (no text, no decodable image or audio, no precomputed "
    "feature row). They can only be ranked by collaborative signal.",
)
def raw_items_have_a_modality(
    raw_items: pd.DataFrame,
    raw_item_text: pd.DataFrame,
    raw_item_images: dict,
    raw_item_audio: dict,
    source_dataset: dict,
) -> dg.AssetCheckResult:
    usable = (
        raw_item_text["present"].to_numpy(bool)
        | np.asarray(raw_item_images["present"], bool)
        | np.asarray(raw_item_audio["present"], bool)
    )
    info = source_dataset.get("info") or {}
    precomputed = info.get("precomputed") or {}
    row_column = info.get("feature_row_column")
    unreadable = []
    for path in precomputed.values():
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # the features asset fails with the same cause; count it as no modality here
            unreadable.append(f"{path}: {exc}")
            continue
        rows = (
            raw_items[row_column].to_numpy(np.int64) if row_column in raw_items.columns else np.arange(len(raw_items))
        )
        rows_ok = rows < array.shape[0]
        values = np.asarray(array[rows[rows_ok]], dtype=np.float64)
        has = np.zeros(len(rows), dtype=bool)
        has[rows_ok] = np.isfinite(values).all(axis=1) & (np.abs(values).sum(axis=1) > 0)
        usable |= has
    none = raw_items.loc[~usable, [c for c in ("item_id", "text", "image", "audio") if c in raw_items.columns]]
    n = len(none)
    return dg.AssetCheckResult(
        passed=n == 0,
        severity=WARN,
        description=(
            "every item has at least one usable modality"
            if n == 0
            else f"{n} item(s) have no usable modality; content models cannot place them. Add text, fix their "
            "media (see the quarantine tables) or drop them from the catalogue."
        ),
        metadata={
            "items_without_modality": n,
            "items": len(raw_items),
            "precomputed": ", ".join(precomputed) or "none",
            "examples": _examples(none),
            **({"unreadable_feature_files": dg.MetadataValue.json(unreadable)} if unreadable else {}),
        },
    )


@dg.asset_check(
    asset="raw_interactions",
    additional_ins={"source_dataset": dg.AssetIn("source_dataset")},
    description="Table rows the source set aside under bad_rows=quarantine (empty ids, unparsable "
    "timestamps, non-numeric weights, unknown or repeated items). The rows are listed in "
    "the raw_items / raw_interactions metadata.",
)
def raw_rows_quarantined(raw_interactions: pd.DataFrame, source_dataset: dict) -> dg.AssetCheckResult:
    summary = (source_dataset.get("info") or {}).get("row_quarantine") or {}
    rows = {table: int(part.get("rows", 0)) for table, part in summary.items()}
    n = sum(rows.values())
    per_table = ", ".join(f"{table}: {count}" for table, count in rows.items())
    by_reason = {
        f"{table}: {reason}": count
        for table, part in summary.items()
        for reason, count in (part.get("by_reason") or {}).items()
    }
    return dg.AssetCheckResult(
        passed=n == 0,
        severity=WARN,
        description=(
            "no table row was quarantined"
            if n == 0
            else f"{n} table row(s) were quarantined and not loaded ({per_table}); "
            "see the row_quarantine table in the raw_items / raw_interactions metadata and fix the source "
            "files."
        ),
        metadata={
            "rows_quarantined": n,
            "by_table": dg.MetadataValue.json(rows),
            "by_reason": dg.MetadataValue.json(by_reason),
        },
    )


def _decode_check(bundle: dict, modality: str) -> dg.AssetCheckResult:
    table = bundle.get("quarantine")
    table = (
        table if isinstance(table, pd.DataFrame) else pd.DataFrame(columns=["item_id", "modality", "file", "reason"])
    )
    n = len(table)
    reasons = table["reason"].str.split(":").str[0].value_counts().to_dict() if n else {}
    return dg.AssetCheckResult(
        passed=n == 0,
        severity=WARN,
        description=(
            f"every referenced {modality} file decoded"
            if n == 0
            else f"{n} {modality} file(s) could not be used and were quarantined; those items keep their other "
            "modalities. See the examples and fix or replace the files."
        ),
        metadata={
            "quarantined": n,
            "decoded": int(np.asarray(bundle["present"]).sum()),
            "by_reason": dg.MetadataValue.json({str(k): int(v) for k, v in reasons.items()}),
            "examples": _examples(table),
        },
    )


@dg.asset_check(asset="raw_item_images", description="Image files that could not be decoded (quarantined).")
def raw_item_images_decoded(raw_item_images: dict) -> dg.AssetCheckResult:
    return _decode_check(raw_item_images, "image")


@dg.asset_check(asset="raw_item_audio", description="Audio files that could not be decoded (quarantined).")
def raw_item_audio_decoded(raw_item_audio: dict) -> dg.AssetCheckResult:
    return _decode_check(raw_item_audio, "audio")


ALL_CHECKS = [
    raw_items_schema,
    raw_interactions_schema,
    raw_interactions_not_empty,
    raw_interactions_duplicates,
    raw_interactions_known_items,
    raw_interactions_timestamps_plausible,
    raw_items_have_a_modality,
    raw_item_images_decoded,
    raw_item_audio_decoded,
    raw_rows_quarantined,
]


def all_asset_checks() -> list[dg.AssetChecksDefinition]:
    return list(ALL_CHECKS)
