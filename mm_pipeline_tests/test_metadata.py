"""DataFrames as Dagster table metadata: typed columns, capped rows, JSON-safe values."""

import dagster as dg
import numpy as np
import pandas as pd
from dagster._serdes import deserialize_value, serialize_value

from mm_pipeline.defs.metadata import frame_table, quarantine_metadata


def test_columns_are_typed_and_missing_values_empty():
    frame = pd.DataFrame(
        {
            "model": ["ease", "bpr", None],
            "users": [3, 4, 5],
            "ndcg@20": [0.1234567, np.nan, np.inf],
            "warm": [True, False, True],
            "n": pd.array([1, None, 2], dtype="Int64"),
        }
    )
    table = frame_table(frame, digits=3)
    assert isinstance(table, dg.TableMetadataValue)
    assert [(c.name, c.type) for c in table.schema.columns] == [
        ("model", "string"),
        ("users", "int"),
        ("ndcg@20", "float"),
        ("warm", "bool"),
        ("n", "int"),
    ]
    rows = [r.data for r in table.records]
    assert rows[0] == {"model": "ease", "users": 3, "ndcg@20": 0.123, "warm": True, "n": 1}
    assert rows[1]["ndcg@20"] is None and rows[1]["n"] is None and rows[2]["model"] is None
    assert rows[2]["ndcg@20"] is None  # infinity has no JSON form either
    assert type(rows[0]["users"]) is int and type(rows[0]["warm"]) is bool  # numpy scalars converted
    assert deserialize_value(serialize_value(table)) == table  # what the event log stores


def test_rows_are_capped_and_the_cap_is_stated():
    table = frame_table(pd.DataFrame({"x": range(50)}), max_rows=10)
    assert [r.data["x"] for r in table.records] == list(range(10))
    assert table.schema.constraints.other == ["first 10 of 50 rows shown"]
    assert frame_table(pd.DataFrame({"x": range(5)}), max_rows=10).schema.constraints.other == []


def test_named_index_becomes_a_column_and_empty_frames_keep_their_schema():
    counts = pd.Series([2, 1], index=pd.Index(["a", "b"], name="item_id"), name="interactions").to_frame()
    table = frame_table(counts)
    assert [c.name for c in table.schema.columns] == ["item_id", "interactions"]
    assert table.records[0].data == {"item_id": "a", "interactions": 2}
    filtered = pd.DataFrame({"v": [1, 2, 3]}).iloc[[2]]  # an unnamed, non-default index is dropped
    assert [r.data for r in frame_table(filtered).records] == [{"v": 3}]
    empty = quarantine_metadata(pd.DataFrame({"item_id": pd.Series([], dtype=str), "reason": []}))
    assert empty["quarantined"] == 0 and empty["quarantine"].records == []
    assert [c.name for c in empty["quarantine"].schema.columns] == ["item_id", "reason"]
