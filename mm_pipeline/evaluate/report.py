"""Human-readable evaluation outputs: tables (markdown and HTML), PNG figures, report files, and the
comparison report rendered from a computed :class:`~mm_pipeline.evaluate.comparison.ModelComparison`
(:func:`render_comparison`; :func:`build_comparison` computes and renders).

A report is a list of blocks (:class:`Heading`, :class:`Paragraph`, :class:`Table`,
:class:`Figure`) rendered twice from the same content: :func:`render_markdown` (figures linked as
``<name>.png`` next to the file) and :func:`render_html` (one self-contained page, figures inline).
Figures use a bare :class:`matplotlib.figure.Figure` on the Agg canvas: no pyplot state, no backend
switch, safe inside a Dagster worker; PNGs carry no timestamp, so equal inputs give equal bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mm_pipeline.evaluate.comparison import ModelComparison, compare_models
from mm_pipeline.evaluate.protocol import MIN_SUBGROUP_USERS
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


def metrics_table_markdown(
    models: Mapping[str, Mapping[str, float]], columns: Sequence[str] = DEFAULT_COLUMNS, highlight: str | None = None
) -> str:
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
    lines = ["| model | " + " | ".join(_cell(c) for c in columns) + " |", "|---|" + "---:|" * len(columns)]
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


def write_report(
    report_dir: str | Path,
    metrics: Mapping[str, Any],
    markdown: str,
    figures: Mapping[str, bytes],
    html_page: str | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json`` (sorted keys, indent 2), ``report.md`` and ``<name>.png`` per figure.

    With ``html_page``, also ``report.html``. Each file is written atomically. Returns
    ``{file name: path}``, e.g. ``{"metrics.json": ..., "report.md": ..., "loss.png": ...}``.
    Figure names must be plain file stems.
    """
    report_dir = Path(report_dir)
    for name, png in figures.items():
        if not _PLAIN_NAME.match(str(name)) or name in ("metrics", "report"):
            raise ValueError(
                f"figure name {name!r} must be a plain file stem other than "
                "'metrics'/'report' (letters, digits, '_', '-', '.')"
            )
        if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(_PNG_SIGNATURE):
            raise ValueError(f"figures[{name!r}] is not PNG bytes")
    text = json.dumps(dict(metrics), sort_keys=True, indent=2, default=_json_default) + "\n"
    written = {
        "metrics.json": atomic_write_text(report_dir / "metrics.json", text),
        "report.md": atomic_write_text(report_dir / "report.md", markdown),
    }
    if html_page is not None:
        written["report.html"] = atomic_write_text(report_dir / "report.html", html_page)
    for name, png in figures.items():
        written[f"{name}.png"] = atomic_write_bytes(report_dir / f"{name}.png", bytes(png))
    return written


def figure_name(text: str) -> str:
    """A plain file stem for a figure (``mm_gcn[int8]`` -> ``mm_gcn_int8_``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(text))
    return name if _PLAIN_NAME.match(name) else f"figure_{name}"


# ------------------------------------------------------------------------------------ report blocks
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells; ``bold`` holds the indices of rows to emphasise."""

    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    bold: frozenset[int] = field(default_factory=frozenset)
    note: str = ""

    def __post_init__(self):
        for index, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table row {index} has {len(row)} cells for {len(self.columns)} columns")

    def markdown(self) -> str:
        if not self.rows:
            return "_empty_\n"

        def escape(text: str) -> str:  # a significance mark must not start emphasis
            return _cell(text).replace("*", r"\*")

        lines = ["| " + " | ".join(escape(c) for c in self.columns) + " |", "|---|" + "---:|" * (len(self.columns) - 1)]
        for index, row in enumerate(self.rows):
            cells = [escape(c) for c in row]
            if index in self.bold:
                cells = [f"**{c}**" if c else c for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        note = f"\n{escape(self.note)}\n" if self.note else ""
        return "\n".join(lines) + "\n" + note

    def html(self) -> str:
        if not self.rows:
            return "<p><em>empty</em></p>"
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.columns)
        body = []
        for index, row in enumerate(self.rows):
            cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
            body.append(f'<tr class="bold">{cells}</tr>' if index in self.bold else f"<tr>{cells}</tr>")
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


@dataclass(frozen=True)
class Figure:
    """A PNG figure; ``name`` is its file stem in the markdown report."""

    name: str
    png: bytes
    caption: str = ""


Block = Heading | Paragraph | Table | Figure


def render_markdown(blocks: Sequence[Block]) -> str:
    """Markdown report: figures as ``![caption](<name>.png)`` links to files written next to it."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Table):
            parts.append(block.markdown().rstrip("\n"))
        elif isinstance(block, Figure):
            alt = (block.caption or block.name).replace("[", "(").replace("]", ")")
            parts.append(f"![{alt}]({block.name}.png)")
        else:
            raise TypeError(f"not a report block: {type(block).__name__}")
    return "\n\n".join(parts) + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px}
td{text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f0f0f0}
tr.bold td{font-weight:bold}p.note{font-size:0.85em;color:#555}figure{margin:1em 0}
figcaption{font-size:0.85em;color:#555}img{max-width:100%}"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained HTML page: tables as HTML, figures inline as base64 PNG."""
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
    ]
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            parts.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(block.html())
        elif isinstance(block, Figure):
            if not bytes(block.png).startswith(_PNG_SIGNATURE):
                raise ValueError(f"figure {block.name!r} is not PNG bytes")
            data = base64.b64encode(bytes(block.png)).decode("ascii")
            caption = html.escape(block.caption or block.name)
            parts.append(
                f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        else:
            raise TypeError(f"not a report block: {type(block).__name__}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ figures
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


ROLE_COLORS = {
    "baseline": "#9e9e9e",
    "primary": "#1f77b4",
    "component": "#9467bd",
    "ablation": "#ff7f0e",
    "variant": "#2ca02c",
}


def interval_bar_png(
    names: Sequence[str],
    values: Sequence[float],
    intervals: Sequence[Sequence[float]],
    roles: Sequence[str],
    metric: str,
    marked: Sequence[bool] | None = None,
) -> bytes:
    """Horizontal bars of ``values`` per model with ``intervals`` (lo, hi) as error bars.

    Bars are coloured by ``roles`` (keys of :data:`ROLE_COLORS`); a ``*`` follows the value of
    every model with ``marked`` true (e.g. significantly different from the best baseline).
    """
    n = len(names)
    if n == 0:
        raise ValueError("names is empty: nothing to plot")
    if not (len(values) == len(intervals) == len(roles) == n) or (marked is not None and len(marked) != n):
        raise ValueError("names, values, intervals, roles (and marked) must have the same length")
    unknown = sorted(set(roles) - set(ROLE_COLORS))
    if unknown:
        raise ValueError(f"unknown roles {unknown}; use {sorted(ROLE_COLORS)}")
    values_arr = np.asarray(values, dtype=float)
    bounds = np.asarray(intervals, dtype=float).reshape(n, 2)
    errors = np.clip(np.stack([values_arr - bounds[:, 0], bounds[:, 1] - values_arr]), 0, None)
    fig = _new_figure(7, 0.8 + 0.35 * n)
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    ax.barh(y, values_arr, xerr=errors, color=[ROLE_COLORS[r] for r in roles], capsize=3, error_kw={"elinewidth": 1})
    ax.set_yticks(y, [str(name) for name in names], fontsize="small")
    for row, value in enumerate(values_arr):
        label = f"{value:.4f}" + (" *" if marked is not None and marked[row] else "")
        ax.text(
            bounds[row, 1] if np.isfinite(bounds[row, 1]) else value,
            y[row],
            " " + label,
            va="center",
            fontsize="x-small",
        )
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=ROLE_COLORS[r], label=r) for r in ROLE_COLORS if r in roles],
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    ax.set_xlabel(f"{metric} (bars: 95% bootstrap interval; * significant vs best baseline)")
    ax.set_xlim(0, max(float(np.nanmax(bounds[:, 1])), float(np.nanmax(values_arr)), 1e-6) * 1.25)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def modality_weights_png(weights: np.ndarray, present: np.ndarray, modalities: Sequence[str]) -> bytes:
    """Distribution of the attention-fusion weight of each modality over the items that have it.

    Left: box plot per modality (mean as a triangle); right: histograms of the same weights.
    Items missing a modality carry weight 0 for it by construction and are left out of its
    distribution (the legend gives each modality's item coverage).
    """
    weights, present = np.asarray(weights, dtype=float), np.asarray(present, dtype=bool)
    modalities = [str(m) for m in modalities]
    if weights.ndim != 2 or weights.shape[1] != len(modalities) or present.shape != weights.shape:
        raise ValueError(
            f"weights and present must both be [n_items, {len(modalities)}] (one column per "
            f"modality {modalities}), got {weights.shape} and {present.shape}"
        )
    samples = [weights[present[:, m], m] for m in range(len(modalities))]
    shown = [m for m, sample in enumerate(samples) if sample.size]
    fig = _new_figure(9, 3.2)
    box, hist = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if shown:
        box.boxplot([samples[m] for m in shown], showmeans=True, showfliers=False)
        box.set_xticks(range(1, len(shown) + 1), [modalities[m] for m in shown])
        bins = np.linspace(0.0, 1.0, 31)
        for m in shown:
            hist.hist(
                samples[m],
                bins=bins,
                histtype="step",
                linewidth=1.5,
                label=f"{modalities[m]} ({samples[m].size / max(len(weights), 1):.0%} of items)",
            )
        hist.legend(fontsize="small")
    box.set_ylabel("fusion weight")
    box.set_title("per modality (items that have it)", fontsize="small")
    box.grid(axis="y", alpha=0.3)
    hist.set_xlabel("fusion weight")
    hist.set_ylabel("items")
    hist.set_title("histogram", fontsize="small")
    return _png(fig)


LOSS_COLUMNS = ("loss", "cross_modal", "collaborative")
VALIDATION_COLUMNS = ("valid_ndcg@20", "valid_recall@20")


def training_curves_png(histories: Mapping[str, pd.DataFrame]) -> bytes:
    """One panel per model: training losses (left axis) and validation metrics (right axis) per epoch.

    Plots the columns of :data:`LOSS_COLUMNS` and :data:`VALIDATION_COLUMNS` a history has; epochs
    without a validation pass (NaN) are skipped for that curve.
    """
    histories = {name: h for name, h in histories.items() if isinstance(h, pd.DataFrame) and len(h)}
    if not histories:
        raise ValueError("no non-empty history to plot")
    n = len(histories)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(4.2 * ncols, 3.0 * nrows)
    for index, (name, history) in enumerate(histories.items()):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        x = history["epoch"].to_numpy(dtype=float) if "epoch" in history else np.arange(1, len(history) + 1.0)
        handles = []
        for column in [c for c in LOSS_COLUMNS if c in history]:
            y = history[column].to_numpy(dtype=float)
            keep = np.isfinite(y)
            handles += ax.plot(x[keep], y[keep], marker="o", markersize=2, label=column)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        valid = [c for c in VALIDATION_COLUMNS if c in history]
        if valid:
            right = ax.twinx()
            for offset, column in enumerate(valid):
                y = history[column].to_numpy(dtype=float)
                keep = np.isfinite(y)
                handles += right.plot(
                    x[keep],
                    y[keep],
                    marker="s",
                    markersize=2,
                    linestyle="--",
                    color=f"C{len(LOSS_COLUMNS) + offset}",
                    label=column,
                )
            right.set_ylabel("validation")
        ax.set_title(str(name), fontsize="small")
        ax.grid(alpha=0.3)
        if handles:
            ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize="x-small")
    return _png(fig)


# ------------------------------------------------------------------------------- the comparison report
SIGNIFICANCE_MARK = "*"


class Comparison(NamedTuple):
    """A rendered :class:`~mm_pipeline.evaluate.comparison.ModelComparison` (what :func:`build_comparison`
    returns)."""

    metrics: dict[str, Any]  # the content of metrics.json
    markdown: str  # report.md (figures linked as <name>.png)
    html: str  # report.html (self-contained)
    figures: dict[str, bytes]  # file stem -> PNG
    tables: dict[str, str]  # section -> markdown table (for Dagster metadata)


def build_comparison(
    models, data, *, title: str = "Evaluation report", explanations: Explanations | None = None, **options
) -> Comparison:
    """:func:`~mm_pipeline.evaluate.comparison.compare_models` (``models``, ``data``, ``options``), rendered
    by :func:`render_comparison` under ``title`` (with the ``explanations`` section when given)."""
    comparison = compare_models(models, data, **options)
    if explanations is not None and explanations.dominant is not None and comparison.primary_per_user is not None:
        from mm_pipeline.explain.summary import accuracy_by_interest_from

        # The primary model's accuracy per dominant modality from the test ranking just made, not a second one.
        by_interest = accuracy_by_interest_from(comparison.primary_per_user, explanations.dominant, comparison.max_k)
        explanations = dataclasses.replace(explanations, by_interest=by_interest)
    return render_comparison(comparison, title, explanations)


@dataclass(frozen=True)
class Explanations:
    """What the report says about explanations: the deletion test per model (``faithfulness``: model,
    removed, users, top/random score and rank drops, gaps), users by dominant score part (``by_part``) and
    test users by dominant modality in the aligned space with the primary model's accuracy per group
    (``by_interest``: dominant modality, users, share, recall@20, ndcg@20, note; see
    :func:`mm_pipeline.explain.summary.accuracy_by_interest`). With ``dominant`` (user index -> dominant
    modality), :func:`build_comparison` fills ``by_interest`` from its own test ranking of the primary model."""

    faithfulness: pd.DataFrame
    by_part: pd.DataFrame
    users: int
    by_interest: pd.DataFrame | None = None
    dominant: pd.Series | None = None


def _finite(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:+.4f}"


def _interval(low: float, high: float) -> str:
    return "n/a" if not (np.isfinite(low) and np.isfinite(high)) else f"[{low:.4f}, {high:.4f}]"


def _not_enough(support: Mapping[str, Any]) -> str:
    return f"Not enough data: {support['reason']}. No metrics are reported for this group."


def _frame_table(frame: pd.DataFrame) -> Table:
    rows = [
        [_finite(v) if isinstance(v, (float, np.floating)) else str(v) for v in row]
        for row in frame.itertuples(index=False)
    ]
    return Table([str(c) for c in frame.columns], rows)


def compression_blocks(frame: pd.DataFrame) -> tuple[list, Table]:
    """The report's compression section: what is served and why, then the size-quality-latency table
    (one row per variant of the served artifact; older stats tables are shown as they are)."""
    if "served" not in frame.columns:
        table = _frame_table(frame)
        return [Heading("Compression (validation split)"), table], table
    rows = []
    for row in frame.to_dict(orient="records"):
        rows.append(
            [
                str(row["variant"]) + (" (served)" if row["served"] else ""),
                f"{row['bytes'] / 1e6:.2f}",
                f"{row['size_ratio']:.2f}x",
                _finite(row["valid_ndcg@20"]),
                f"{100 * row['valid_ndcg_loss']:+.2f}%",
                _finite(row["test_ndcg@20"]),
                f"{100 * row['test_ndcg_loss']:+.2f}%",
                _finite(row["valid_recall@20"]),
                _finite(row["test_recall@20"]),
                f"{row['latency_median_ms']:.1f}",
                f"{row['latency_p90_ms']:.1f}",
                "yes" if row["passes_gate"] else "no",
            ]
        )
    table = Table(
        [
            "variant",
            "MB",
            "smaller than fp32",
            "valid NDCG@20",
            "valid loss",
            "test NDCG@20",
            "test loss",
            "valid recall@20",
            "test recall@20",
            "latency ms (median)",
            "latency ms (p90)",
            "within the gate",
        ],
        rows,
    )
    served = frame.loc[frame["served"].astype(bool)].iloc[0]
    text = (
        "The served artifact (the MLflow model's serving arrays: user and item tables, the item-item "
        "weights, histories, keys) at fp32 (the plain format), fp32_compact (integers and keys stored "
        "compactly, sparse blocks as CSR, no rounding), then the compact format with fp16, or int8 / int4 "
        "with one scale per row (int4_outliers: each row's largest entries kept in fp16). "
        "Loss: relative NDCG@20 drop against fp32. Latency: one "
        "request through the served pyfunc's predict (a batch of known users, k = 20). The served "
        "variant is the smallest whose validation loss is within the gate; test is for the record. "
        f"Served: {served['variant']}, {served['size_ratio']:.1f}x smaller than fp32 "
        f"({served['bytes'] / 1e6:.2f} MB), validation loss {100 * served['valid_ndcg_loss']:+.2f}%, "
        f"test loss {100 * served['test_ndcg_loss']:+.2f}%."
    )
    return [Heading("Compression of the served artifact"), Paragraph(text), table], table


class _ComparisonTables:
    """The report's tables, formatted from a :class:`ModelComparison`."""

    def __init__(self, comparison: ModelComparison):
        self.c = comparison
        self.names = comparison.models
        self.recall, self.ndcg = f"recall@{comparison.max_k}", f"ndcg@{comparison.max_k}"
        self.bold = frozenset([self.names.index(comparison.primary)])

    def main(self) -> Table:
        c, recall, ndcg = self.c, self.recall, self.ndcg
        frame = c.overall[c.max_k]
        best = c.best_baseline

        def marked(row, metric: str) -> str:
            return _finite(row[metric]) + (SIGNIFICANCE_MARK if row[f"{metric}_significant"] else "")

        note = (
            f"{SIGNIFICANCE_MARK} differs significantly from the best baseline ({best}): paired bootstrap over "
            f"test users, 95% interval of the difference excludes 0. Intervals: 95% percentile bootstrap."
            if best
            else "No baseline: no significance test."
        )
        plain = c.plain_metrics
        return Table(
            ["model", "role", recall, "95% CI", ndcg, "95% CI", *[f"{m}@{c.max_k}" for m in plain]],
            [
                [
                    row["model"],
                    c.role_label(row["model"]),
                    marked(row, recall),
                    _interval(row[f"{recall}_ci_low"], row[f"{recall}_ci_high"]),
                    marked(row, ndcg),
                    _interval(row[f"{ndcg}_ci_low"], row[f"{ndcg}_ci_high"]),
                    *[_finite(row[f"{m}@{c.max_k}"]) for m in plain],
                ]
                for _, row in frame.iterrows()
            ],
            self.bold,
            note,
        )

    def at(self, k: int) -> Table:
        c, metrics = self.c, ("recall", "ndcg", *self.c.plain_metrics)
        return Table(
            ["model", "role", *[f"{m}@{k}" for m in metrics]],
            [
                [row["model"], c.role_label(row["model"]), *[_finite(row[f"{m}@{k}"]) for m in metrics]]
                for _, row in c.overall[k].iterrows()
            ],
            self.bold,
        )

    def significance(self) -> Table | None:
        c = self.c
        if c.significance is None:
            return None
        others = [n for n in self.names if n != c.best_baseline]
        tests = c.significance.set_index(["model", "metric"])

        def cells(name: str, metric: str) -> list[str]:
            test = tests.loc[(name, metric)]
            return [
                f"{test['difference']:+.4f}" + (SIGNIFICANCE_MARK if test["significant"] else ""),
                f"[{test['ci_low']:+.4f}, {test['ci_high']:+.4f}]",
                f"{test['p_value']:.3f}",
            ]

        return Table(
            ["model", f"Δ {self.recall}", "95% CI", "p", f"Δ {self.ndcg}", "95% CI", "p"],
            [[name, *cells(name, self.recall), *cells(name, self.ndcg)] for name in others],
            frozenset([others.index(c.primary)]) if c.primary != c.best_baseline else frozenset(),
            f"Each model minus {c.best_baseline} on the same test users ({c.n_resamples} paired resamples; no "
            f"correction for multiple comparisons).",
        )

    def subgroup(self, frame: pd.DataFrame | None) -> Table | None:
        if frame is None:
            return None
        columns = [col for col in frame.columns if col not in ("model", "role")]
        present = frame["model"].tolist()
        return Table(
            ["model", "role", *columns],
            [
                [row["model"], self.c.role_label(row["model"]), *[_finite(row[col]) for col in columns]]
                for _, row in frame.iterrows()
            ],
            frozenset([present.index(self.c.primary)]) if self.c.primary in present else frozenset(),
        )

    def ablations(self) -> Table | None:
        frame, recall, ndcg = self.c.ablations, self.recall, self.ndcg
        if frame is None:
            return None
        parents = frame.loc[frame["compared_with"] == "", "model"].tolist()

        def delta(row, column: str) -> str:
            return "" if not row["compared_with"] else _signed(row[f"{column}_delta"])

        return Table(
            [
                "model",
                "compared with",
                recall,
                f"Δ {recall}",
                ndcg,
                f"Δ {ndcg}",
                f"cold {recall}",
                "Δ",
                f"long-tail {recall}",
                "Δ",
            ],
            [
                [
                    row["model"],
                    row["compared_with"],
                    _finite(row[recall]),
                    delta(row, recall),
                    _finite(row[ndcg]),
                    delta(row, ndcg),
                    _finite(row[f"cold_{recall}"]),
                    delta(row, f"cold_{recall}"),
                    _finite(row[f"tail_{recall}"]),
                    delta(row, f"tail_{recall}"),
                ]
                for _, row in frame.iterrows()
            ],
            frozenset([0]),
            f"Δ = ablation minus the model it is an ablation of ({', '.join(parents)}).",
        )

    def modality_weights(self) -> Table | None:
        frame = self.c.modality_weights
        if frame is None:
            return None
        return Table(
            ["modality", "items", "coverage", "mean", "p10", "median", "p90"],
            [
                [
                    row["modality"],
                    str(row["items"]),
                    _finite(row["coverage"]),
                    *[_finite(row[col]) for col in ("mean", "p10", "median", "p90")],
                ]
                for row in frame.to_dict(orient="records")
            ],
        )

    def selection(self) -> tuple[Table, Table | None] | None:
        chosen = self.c.selection
        if chosen is None:
            return None
        validation = chosen.validation
        values = [col for col in validation.columns if col != "model"]
        validation_table = Table(
            ["model", *values],
            [[str(row["model"]), *[_finite(row[col]) for col in values]] for _, row in validation.iterrows()],
            frozenset([int(np.flatnonzero(validation["model"].to_numpy() == chosen.selected)[0])]),
            "Chosen on validation only; the test columns are for the record, they played no part.",
        )
        searches = chosen.searches
        search_table = (
            Table(
                [str(col) for col in searches.columns],
                [
                    [_finite(v) if isinstance(v, float) else str(v) for v in row]
                    for row in searches.itertuples(index=False)
                ],
            )
            if len(searches)
            else None
        )
        return validation_table, search_table


def comparison_figures(comparison: ModelComparison) -> dict[str, bytes]:
    """The report's figures (file stem -> PNG): recall at the largest k with intervals, the modality
    weights (with aligned embeddings) and the training curves (with histories)."""
    frame, recall = comparison.overall[comparison.max_k], f"recall@{comparison.max_k}"
    figures = {
        f"recall_at_{comparison.max_k}_ci": interval_bar_png(
            frame["model"].tolist(),
            frame[recall].tolist(),
            [[lo, hi] for lo, hi in zip(frame[f"{recall}_ci_low"], frame[f"{recall}_ci_high"])],
            frame["role"].tolist(),
            recall,
            marked=[bool(m) for m in frame[f"{recall}_significant"]],
        )
    }
    aligned = comparison.aligned
    if aligned is not None and len(aligned["modalities"]):
        figures["modality_weights"] = modality_weights_png(
            aligned["weights"], aligned["present"], aligned["modalities"]
        )
    if comparison.histories:
        figures["training_curves"] = training_curves_png(comparison.histories)
    return figures


def render_comparison(
    comparison: ModelComparison, title: str = "Evaluation report", explanations: Explanations | None = None
) -> Comparison:
    """The report of ``comparison``: markdown (figures linked as ``<name>.png``), one self-contained HTML
    page, the figures, and each section's table as markdown (for Dagster metadata)."""
    c, tables = comparison, _ComparisonTables(comparison)
    metrics, recall = c.metrics, tables.recall
    main_table = tables.main()
    other_ks = sorted(k for k in c.ks if k != c.max_k)
    other_tables = {k: tables.at(k) for k in other_ks}
    significance_table = tables.significance()
    cold_table, tail_table = tables.subgroup(c.cold_start), tables.subgroup(c.long_tail)
    ablation_table, weights_table = tables.ablations(), tables.modality_weights()
    compression, compression_table = compression_blocks(c.compression) if c.compression is not None else ([], None)
    figures = comparison_figures(c)
    bar_name = f"recall_at_{c.max_k}_ci"

    selection_blocks: list = []
    tables_extra: dict[str, str] = {}
    selection = tables.selection()
    if selection is not None:
        validation_table, search_table = selection
        chosen = c.selection
        selection_blocks = [
            Heading("Model selection"),
            Paragraph(
                f"Shipped (registered as the challenger): {chosen.selected}, because "
                f"{chosen.reason}. Its test {recall}: "
                f"{_finite(metrics['models'].get(chosen.selected, {}).get(recall))}."
            ),
            validation_table,
        ]
        if search_table is not None:
            selection_blocks += [
                Paragraph(
                    "Each model's own settings were chosen on validation within a time "
                    "budget (the settings tried, the seconds spent, what was chosen):"
                ),
                search_table,
            ]
        tables_extra = {
            "selection": validation_table.markdown(),
            **({"searches": search_table.markdown()} if search_table is not None else {}),
        }

    ds, support = metrics["dataset"], metrics["support"]
    spec = f"{ds['spec']} " if "spec" in ds else ""
    blocks: list = [
        Heading(title, 1),
        Paragraph(
            f"Dataset {spec}({ds['users']} users, {ds['items']} items). Primary model: {c.primary}; "
            f"baselines: {', '.join(metrics['baselines']) or 'none'}; components of the primary model: "
            f"{', '.join(metrics['components']) or 'none'}; ablations: "
            f"{', '.join(metrics['ablations']) or 'none'}; "
            f"variants: {', '.join(metrics['variants']) or 'none'}."
        ),
        Paragraph(metrics["protocol"]),
        *selection_blocks,
        Heading("All items (full ranking)"),
        main_table,
        Figure(bar_name, figures[bar_name], f"{recall} per model with 95% bootstrap intervals"),
    ]
    for k in other_ks:
        blocks += [Heading(f"All items at {k}", 3), other_tables[k]]
    blocks += [Heading("Significance vs the best baseline")]
    blocks += [significance_table] if significance_table else [Paragraph("No baseline to compare with.")]
    blocks += [Heading("Ablations")]
    blocks += [ablation_table] if ablation_table else [Paragraph("No ablation models in this report.")]
    blocks += [
        Heading("Cold-start items"),
        Paragraph(
            f"{ds['cold_items']} items have no training interaction; {ds['cold_test_interactions']} "
            f"test interactions on them from {support['cold_start']['users']} test users, ranked "
            "among the cold items only."
        ),
    ]
    blocks += [cold_table] if cold_table else [Paragraph(_not_enough(support["cold_start"]))]
    blocks += [
        Heading("Long-tail items"),
        Paragraph(
            f"Head: the {ds['head_items']} most popular items, which together hold "
            f"{ds['head_share']:.0%} of the training interactions. Long tail: the other "
            f"{ds['tail_items']} items with a training interaction ({ds['tail_test_interactions']} "
            f"test interactions from {support['long_tail']['users']} test users), evaluated on "
            "the full ranking with the truth restricted to them. tail_share@k: share of the "
            "recommended slots holding long-tail items."
        ),
    ]
    blocks += [tail_table] if tail_table else [Paragraph(_not_enough(support["long_tail"]))]
    blocks += compression
    blocks += [Heading("Modality weights")]
    if weights_table:
        blocks += [Paragraph("Attention-fusion weight of each modality, over the items that have it."), weights_table]
        if "modality_weights" in figures:
            blocks.append(Figure("modality_weights", figures["modality_weights"], "modality-weight distribution"))
    else:
        blocks.append(Paragraph("No aligned item embeddings given."))
    if explanations is not None:
        tested = explanations.faithfulness.dropna(subset=["rank gap"])
        blocks += [
            Heading("Explanations and their faithfulness"),
            Paragraph(
                f"Deletion test on {explanations.users} held-out users: for each user's top recommended item, "
                "remove the history item (or modality) the explanation credits most, and separately a random "
                "one, and measure how far the item's score and rank fall. A faithful explanation has a positive "
                "gap (top minus random). Embedding models with content inputs (mm_gcn) are tested on "
                "modalities attributed by integrated gradients; other embedding models are not tested."
            ),
            _frame_table(tested) if len(tested) else Paragraph("No model with an exact score split."),
            Paragraph(f"Users by the part that dominates their explained recommendations ({c.primary}):"),
            _frame_table(explanations.by_part),
        ]
        metrics["faithfulness"] = tested.to_dict(orient="records")
        metrics["dominant_part"] = explanations.by_part.to_dict(orient="records")
        if explanations.by_interest is not None and len(explanations.by_interest):
            by_interest = explanations.by_interest
            blocks += [
                Paragraph(
                    "Test users by the modality their training history is most coherent in, in the aligned "
                    "space (a z-score against random item sets of the same size in that modality; 'mixed': "
                    "two or more modalities about as strong; 'none': no modality clearly above chance), with "
                    f"{c.primary}'s test accuracy per group. A group of fewer than {MIN_SUBGROUP_USERS} users "
                    "is reported as not enough data."
                ),
                _frame_table(by_interest.fillna({"note": ""})),
            ]
            metrics["dominant_modality"] = [
                {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
                for row in by_interest.to_dict(orient="records")
            ]
    blocks += [Heading("Training curves")]
    blocks += (
        [Figure("training_curves", figures["training_curves"], "training loss and validation metrics")]
        if "training_curves" in figures
        else [Paragraph("No training histories given.")]
    )

    section_tables = {
        "comparison": main_table.markdown(),
        **{f"comparison_at_{k}": other_tables[k].markdown() for k in other_ks},
        "significance": significance_table.markdown() if significance_table else "_no baseline_",
        "ablations": ablation_table.markdown() if ablation_table else "_no ablations_",
        "cold_start": cold_table.markdown() if cold_table else f"_{_not_enough(support['cold_start'])}_",
        "long_tail": tail_table.markdown() if tail_table else f"_{_not_enough(support['long_tail'])}_",
    }
    section_tables.update(tables_extra)
    if compression_table is not None:
        section_tables["compression"] = compression_table.markdown()
    if weights_table:
        section_tables["modality_weights"] = weights_table.markdown()
    return Comparison(metrics, render_markdown(blocks), render_html(blocks, title), figures, section_tables)
