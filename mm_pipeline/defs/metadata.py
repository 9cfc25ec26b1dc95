"""Small helpers that turn core outputs into Dagster metadata."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd


def frame_markdown(frame: pd.DataFrame, max_rows: int = 30, digits: int = 4) -> str:
    """A markdown table (no extra dependency), at most ``max_rows`` rows."""
    if frame.empty:
        return "_empty_"
    shown = frame.head(max_rows)
    cells = [[f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v) for v in row]
             for row in shown.itertuples(index=False)]
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    more = [f"\n_{len(frame) - max_rows} more rows_"] if len(frame) > max_rows else []
    return "\n".join([header, rule, *body, *more])


def quarantine_metadata(table: pd.DataFrame) -> dict:
    return {"quarantined": len(table),
            "quarantine": dg.MetadataValue.md(frame_markdown(table, 20) if len(table) else "none")}


def history_metadata(history: pd.DataFrame, columns: list[str], title: str) -> dict:
    """Training curve as an inline PNG plus the per-epoch table."""
    from mm_pipeline.evaluate.report import png_markdown, training_curve_png

    columns = [c for c in columns if c in history.columns]
    meta: dict = {"epochs": len(history), "history": dg.MetadataValue.md(frame_markdown(history, 200))}
    if columns and len(history):
        meta["training_curve"] = dg.MetadataValue.md(png_markdown(training_curve_png(history, columns, title), title))
    return meta
