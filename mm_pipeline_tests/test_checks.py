"""Asset checks: each passes on good data and flags the bad case; a blocking failure stops downstream assets."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mm_pipeline.datasets.schema import QuarantineRecord, quarantine_frame
from mm_pipeline.defs import checks
from mm_pipeline.defs.build import all_assets, default_resources

WARN, ERROR = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR


def _items(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n)],
            "text": [f"item {k}" for k in range(n)],
            "image": [None] * n,
            "audio": [None] * n,
        }
    )


def _inter() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["i0", "i1", "i1", "i2"],
            "timestamp": np.array([1_600_000_000, 1_600_000_100, 1_600_000_200, 1_600_000_300]),
            "weight": np.ones(4, dtype=np.float32),
        }
    )


def _meta(result: dg.AssetCheckResult, key: str):
    return result.metadata[key].value


def _records(result: dg.AssetCheckResult, key: str) -> list[dict]:
    """The rows of a table in the check's metadata (Dagster table metadata, typed columns)."""
    table = result.metadata[key]
    assert isinstance(table, dg.TableMetadataValue), type(table)
    return [dict(record.data) for record in table.records]


def test_raw_items_schema():
    good = checks.raw_items_schema(_items())
    assert good.passed and _meta(good, "problems") == 0
    bad = _items().drop(columns=["audio"])
    bad["item_id"] = [1, 2, 2, 3]
    result = checks.raw_items_schema(bad)
    assert not result.passed and result.severity == ERROR
    assert "missing column 'audio'" in result.description and "item_id must be non-empty strings" in result.description
    dup = _items()
    dup.loc[3, "item_id"] = "i0"
    result = checks.raw_items_schema(dup)
    assert not result.passed and "1 repeated item_id(s), e.g. ['i0']" in result.description
    result = checks.raw_items_schema(_items().iloc[:0])
    assert not result.passed and "the catalogue is empty" in result.description


def test_raw_interactions_schema():
    assert checks.raw_interactions_schema(_inter()).passed
    bad = _inter()
    bad["timestamp"] = bad["timestamp"].astype(float)
    bad.loc[1, "weight"] = np.nan
    bad.loc[2, "user_id"] = None
    result = checks.raw_interactions_schema(bad)
    assert not result.passed and result.severity == ERROR and _meta(result, "problems") == 3
    assert "timestamp must be integer seconds" in result.description
    assert "1 weight(s) are NaN or infinite" in result.description
    assert "user_id must be non-empty strings" in result.description and "(1 missing)" in result.description


def test_raw_interactions_not_empty():
    assert checks.raw_interactions_not_empty(_inter(), {"info": {}}).passed
    counts = {"read": {"interactions": 12}, "after_min_rating": {"interactions": 0}}
    result = checks.raw_interactions_not_empty(_inter().iloc[:0], {"info": {"counts": counts}})
    assert not result.passed and result.severity == ERROR
    assert "read 12 interaction(s)" in result.description and "min_rating=none" in result.description


def test_duplicates_warn_with_count_and_examples(monkeypatch):
    from mm_pipeline.registry.pyfunc import user_key

    monkeypatch.setenv("MM_PIPELINE_USER_KEY_SECRET", "checks-tests-secret-0123456789")
    assert checks.raw_interactions_duplicates(_inter()).passed
    inter = pd.concat([_inter(), _inter().iloc[[0, 0, 3]]], ignore_index=True)
    result = checks.raw_interactions_duplicates(inter)
    assert not result.passed and result.severity == WARN
    assert _meta(result, "duplicate_rows") == 3 and _meta(result, "pairs_repeated") == 2
    examples = _records(result, "examples")
    assert {(0, "i0"), (4, "i0")} <= {(r["row"], r["item_id"]) for r in examples}  # the rows, ...
    assert all("u1" not in r.values() and "u2" not in r.values() for r in examples)  # ... never raw user ids
    assert "user_id" not in [c.name for c in result.metadata["examples"].schema.columns]
    keys = {u: user_key(u, b"checks-tests-secret-0123456789")[:16] for u in ("u1", "u2")}
    assert {(r["row"], r["user_key"]) for r in examples} >= {(0, keys["u1"]), (4, keys["u1"])}  # keyed hashes


def test_unknown_items_warn():
    assert checks.raw_interactions_known_items(_inter(), _items()).passed
    inter = _inter()
    inter.loc[[0, 1], "item_id"] = "ghost"
    result = checks.raw_interactions_known_items(inter, _items())
    assert not result.passed and result.severity == WARN
    assert _meta(result, "unknown_item_interactions") == 2 and _meta(result, "unknown_item_ids") == 1
    assert {r["item_id"] for r in _records(result, "examples")} == {"ghost"}


def test_timestamps_plausible():
    assert checks.raw_interactions_timestamps_plausible(_inter()).passed
    inter = _inter()
    inter.loc[0, "timestamp"] = 0  # 1970: a placeholder
    inter.loc[[1, 2], "timestamp"] = int(time.time() * 1000)  # milliseconds read as seconds
    result = checks.raw_interactions_timestamps_plausible(inter)
    assert not result.passed and result.severity == WARN
    assert _meta(result, "before_1990") == 1 and _meta(result, "in_future") == 2
    assert "milliseconds" in result.description


def _present(n: int, where=()) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[list(where)] = True
    return out


def test_items_without_usable_modality(tmp_path):
    items = _items()
    items.loc[[1, 2], "text"] = ""
    text = items[["item_id", "text"]].assign(present=items["text"] != "")
    images = {"present": _present(4, [1])}
    audio = {"present": _present(4)}
    result = checks.raw_items_have_a_modality(items, text, images, audio, {"info": {}})
    assert not result.passed and result.severity == WARN
    assert _meta(result, "items_without_modality") == 1
    assert [r["item_id"] for r in _records(result, "examples")] == ["i2"]
    # A precomputed feature row counts as a modality; an all-zero row does not.
    features = np.ones((4, 3), np.float32)
    features[2] = 0
    np.save(tmp_path / "text_feat.npy", features)
    items["feature_row"] = [0, 1, 3, 2]  # i2 -> row 3 (non-zero), i3 -> row 2 (zero, but i3 has text)
    manifest = {"info": {"precomputed": {"text": str(tmp_path / "text_feat.npy")}, "feature_row_column": "feature_row"}}
    assert checks.raw_items_have_a_modality(items, text, images, audio, manifest).passed
    items["feature_row"] = [0, 1, 2, 3]  # i2 -> the zero row
    assert not checks.raw_items_have_a_modality(items, text, images, audio, manifest).passed


def test_decode_failures_counted_from_quarantine():
    clean = {"present": _present(3, [0, 1, 2]), "quarantine": quarantine_frame([])}
    assert checks.raw_item_images_decoded(clean).passed and checks.raw_item_audio_decoded(clean).passed
    table = quarantine_frame(
        [
            QuarantineRecord("a", "image", "/d/a.png", "cannot decode image: truncated"),
            QuarantineRecord("b", "image", "/d/b.png", "file not found"),
            QuarantineRecord("c", "image", "/d/c.png", "file not found"),
        ]
    )
    result = checks.raw_item_images_decoded({"present": _present(3, [2]), "quarantine": table})
    assert not result.passed and result.severity == WARN
    assert _meta(result, "quarantined") == 3 and _meta(result, "decoded") == 1
    assert _meta(result, "by_reason") == {"file not found": 2, "cannot decode image": 1}


def test_quarantined_rows_warn_with_counts_by_table_and_reason():
    assert checks.raw_rows_quarantined(_inter(), {"info": {}}).passed  # the default bad_rows=error
    summary = {
        "items": {"rows": 0, "problems": 0, "by_reason": {}},
        "interactions": {"rows": 3, "problems": 4, "by_reason": {"empty user_id": 2, "rating is not a number": 2}},
    }
    clean = {"items": summary["items"], "interactions": {"rows": 0, "problems": 0, "by_reason": {}}}
    assert checks.raw_rows_quarantined(_inter(), {"info": {"row_quarantine": clean}}).passed
    result = checks.raw_rows_quarantined(_inter(), {"info": {"row_quarantine": summary}})
    assert not result.passed and result.severity == WARN
    assert _meta(result, "rows_quarantined") == 3 and _meta(result, "by_table") == {"items": 0, "interactions": 3}
    assert _meta(result, "by_reason") == {"interactions: empty user_id": 2, "interactions: rating is not a number": 2}
    assert "3 table row(s) were quarantined" in result.description


# ----------------------------------------------------------------------------------------------
# In a run: checks execute with the raw assets; a blocking failure stops what is downstream
# ----------------------------------------------------------------------------------------------
def _write_ml_latest(root: Path, ratings: list[float]) -> None:
    import cv2

    root.mkdir(parents=True)
    n = len(ratings)
    pd.DataFrame(
        {
            "userId": np.arange(n) % 5 + 1,
            "movieId": np.arange(n) % 8 + 1,
            "rating": ratings,
            "timestamp": 1_500_000_000 + np.arange(n),
        }
    ).to_csv(root / "ratings.csv", index=False)
    pd.DataFrame({"movieId": np.arange(1, 9), "title": [f"M{i}" for i in range(1, 9)], "genres": "Drama"}).to_csv(
        root / "movies.csv", index=False
    )
    (root / "posters").mkdir()
    cv2.imwrite(str(root / "posters" / "1.png"), np.full((8, 8, 3), 90, np.uint8))
    (root / "posters" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # quarantined


def _run_raw(tmp_path: Path, spec: str) -> dg.ExecuteInProcessResult:
    home = tmp_path / "home"
    raw_keys = [key for a in all_assets() for key in a.keys if a.group_names_by_key[key] == "raw"]
    return dg.materialize(
        [*all_assets(), *checks.all_asset_checks()],
        selection=raw_keys,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        resources=default_resources(home=str(home), dataset=spec),
    )


def test_checks_run_with_the_raw_assets(tmp_path):
    _write_ml_latest(tmp_path / "ml", [4.0, 5.0, 2.0] * 10)
    result = _run_raw(tmp_path, f"movielens:{tmp_path / 'ml'}")
    assert result.success  # warnings do not stop the run
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["raw_interactions_not_empty"].passed and evaluations["raw_items_schema"].passed
    decoded = evaluations["raw_item_images_decoded"]
    assert not decoded.passed and decoded.severity == WARN and decoded.metadata["quarantined"].value == 1
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "interaction_split" in materialized


def test_blocking_check_stops_downstream_assets(tmp_path):
    _write_ml_latest(tmp_path / "ml", [1.0, 2.0, 3.0] * 10)  # nothing reaches the default min_rating=4
    result = _run_raw(tmp_path, f"movielens:{tmp_path / 'ml'}")
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    empty = evaluations["raw_interactions_not_empty"]
    assert not empty.passed and empty.severity == ERROR
    assert "min_rating=none" in empty.description
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "raw_interactions" in materialized and "raw_items" in materialized
    assert "interaction_split" not in materialized  # downstream of the failed blocking check


@pytest.mark.parametrize("check", checks.all_asset_checks(), ids=lambda c: c.check_key.name)
def test_every_check_has_a_description_and_the_right_blocking(check):
    spec = next(iter(check.check_specs))
    assert spec.description
    assert spec.blocking == (spec.name in {"raw_items_schema", "raw_interactions_schema", "raw_interactions_not_empty"})
