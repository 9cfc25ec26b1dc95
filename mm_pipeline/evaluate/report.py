"""Human-readable evaluation outputs: a markdown metrics table, PNG training curves, report files."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mm_pipeline.storage import atomic_write_bytes, atomic_write_text

DEFAULT_COLUMNS = ("recall@20", "ndcg@20", "precision@20", "f1@20", "coverage@20", "novelty@20")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _cell(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def metrics_table_markdown(models: Mapping[str, Mapping[str, float]],
                           columns: Sequence[str] = DEFAULT_COLUMNS,
                           highlight: str | None = None) -> str:
    """A markdown table: one row per model (in ``models`` order), one column per metric.

    Values are printed with 4 decimals; a metric a model lacks (or NaN) shows ``n/a``. The row of
    ``highlight`` (a key of ``models``) is bold, name and values alike.
    """
    if not models:
        raise ValueError("models is empty: nothing to tabulate")
    columns = list(columns)
    if not columns:
        raise ValueError("columns must name at least one metric")
    if highlight is not None and highlight not in models:
        raise ValueError(f"highlight {highlight!r} is not one of the models {list(models)}")
    lines = ["| model | " + " | ".join(_cell(c) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, metrics in models.items():
        cells = [_cell(name)] + [_number(metrics.get(c)) for c in columns]
        if name == highlight:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def training_curve_png(history: pd.DataFrame, columns: Sequence[str], title: str) -> bytes:
    """Plot ``history[columns]`` against ``history["epoch"]`` (or the row index) and return PNG bytes.

    Uses a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so no global pyplot state or
    backend is touched (safe inside a Dagster worker). The PNG carries no timestamp, so identical
    inputs give identical bytes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(history, pd.DataFrame):
        raise TypeError(f"history must be a pandas DataFrame, got {type(history).__name__}")
    columns = [columns] if isinstance(columns, str) else list(columns)
    if not columns:
        raise ValueError("columns must name at least one history column to plot")
    missing = [c for c in columns if c not in history.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in history (it has {list(history.columns)})")
    x = history["epoch"].to_numpy() if "epoch" in history.columns else np.arange(len(history))

    fig = Figure(figsize=(5, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for column in columns:
        ax.plot(x, history[column].to_numpy(dtype=float), marker="o", markersize=2, label=str(column))
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """Inline ``png`` as ``![alt](data:image/png;base64,...)`` (Dagster renders it in metadata)."""
    if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(_PNG_SIGNATURE):
        raise ValueError("png must be PNG bytes (e.g. from training_curve_png)")
    alt = str(alt).replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(bytes(png)).decode('ascii')})"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metrics value of type {type(value).__name__} is not JSON-serialisable")


def write_report(report_dir: str | Path, metrics: Mapping[str, Any], markdown: str,
                 figures: Mapping[str, bytes]) -> dict[str, Path]:
    """Write ``metrics.json`` (sorted keys, indent 2), ``report.md`` and ``<name>.png`` per figure.

    Each file is written atomically. Returns ``{file name: path}``, e.g. ``{"metrics.json": ...,
    "report.md": ..., "loss.png": ...}``. Figure names must be plain file stems.
    """
    report_dir = Path(report_dir)
    for name, png in figures.items():
        if not _PLAIN_NAME.match(str(name)) or name in ("metrics", "report"):
            raise ValueError(f"figure name {name!r} must be a plain file stem other than "
                             "'metrics'/'report' (letters, digits, '_', '-', '.')")
        if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(_PNG_SIGNATURE):
            raise ValueError(f"figures[{name!r}] is not PNG bytes")
    text = json.dumps(dict(metrics), sort_keys=True, indent=2, default=_json_default) + "\n"
    written = {"metrics.json": atomic_write_text(report_dir / "metrics.json", text),
               "report.md": atomic_write_text(report_dir / "report.md", markdown)}
    for name, png in figures.items():
        written[f"{name}.png"] = atomic_write_bytes(report_dir / f"{name}.png", bytes(png))
    return written
