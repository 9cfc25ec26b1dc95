"""The whole model comparison: metrics, intervals, significance, cold-start and long-tail results, the
report (markdown and self-contained HTML) and its figures, from trained models and one split.

:func:`build_comparison` is what the ``evaluation_report`` asset runs; a report with ablation models
is the same call with ``ablations=[...]``. Every model gets the same protocol
(:func:`mm_pipeline.evaluate.protocol.evaluate_models`) and, for intra-list diversity, the same item
representation (the fused aligned content embeddings), so the numbers are comparable across rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from mm_pipeline.evaluate.protocol import HEAD_SHARE, MIN_SUBGROUP_INTERACTIONS, MIN_SUBGROUP_USERS, evaluate_models
from mm_pipeline.evaluate.report import (
    Figure,
    Heading,
    Paragraph,
    Table,
    interval_bar_png,
    modality_weights_png,
    render_html,
    render_markdown,
    training_curves_png,
)
from mm_pipeline.recommend.base import EmbeddingRecommender

if TYPE_CHECKING:
    from mm_pipeline.data.types import SplitData

SIGNIFICANCE_MARK = "*"


class Comparison(NamedTuple):
    """What :func:`build_comparison` returns."""

    metrics: dict[str, Any]         # the content of metrics.json
    markdown: str                   # report.md (figures linked as <name>.png)
    html: str                       # report.html (self-contained)
    figures: dict[str, bytes]       # file stem -> PNG
    tables: dict[str, str]          # section -> markdown table (for Dagster metadata)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _interval(bounds: Sequence[float] | None) -> str:
    return "n/a" if bounds is None else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"


def _roles(models: Mapping[str, Any], primary: str, baselines: Sequence[str],
           ablations: Sequence[str], components: Sequence[str] = ()) -> dict[str, str]:
    """Role of each model (baseline / primary / component / ablation / variant), in report order."""
    if primary not in models:
        raise ValueError(f"primary model {primary!r} is not among the models {list(models)}")
    for label, names in (("baselines", baselines), ("ablations", ablations), ("components", components)):
        missing = [n for n in names if n not in models]
        if missing:
            raise ValueError(f"{label} {missing} are not among the models {list(models)}")
        if len(set(names)) != len(names):
            raise ValueError(f"{label} has duplicates: {list(names)}")
    groups = [{primary}, set(baselines), set(ablations), set(components)]
    overlap = {name for i, a in enumerate(groups) for b in groups[i + 1:] for name in a & b}
    if overlap:
        raise ValueError(f"models {sorted(overlap)} are listed in more than one of "
                         "primary/baselines/ablations/components")
    roles = {name: "baseline" for name in baselines}
    roles[primary] = "primary"
    roles.update({name: "component" for name in components})
    roles.update({name: "ablation" for name in ablations})
    roles.update({name: "variant" for name in models if name not in roles})  # e.g. compressed models
    return roles


def _check_aligned(aligned: Mapping[str, Any] | None, n_items: int) -> Mapping[str, Any] | None:
    if aligned is None:
        return None
    missing = [k for k in ("fused", "weights", "present", "modalities") if k not in aligned]
    if missing:
        raise ValueError(f"aligned item embeddings lack {missing} (expected the aligned_item_embeddings value)")
    for key in ("fused", "weights", "present"):
        if np.asarray(aligned[key]).shape[0] != n_items:
            raise ValueError(f"aligned[{key!r}] has {np.asarray(aligned[key]).shape[0]} rows but the split has "
                             f"{n_items} items; the embeddings come from another dataset")
    return aligned


def modality_weight_stats(aligned: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per modality: share of items that have it and its fusion-weight quantiles over those items."""
    weights = np.asarray(aligned["weights"], dtype=np.float64)
    present = np.asarray(aligned["present"], dtype=bool)
    rows = []
    for column, modality in enumerate(aligned["modalities"]):
        values = weights[present[:, column], column]
        quantiles = np.quantile(values, [0.1, 0.5, 0.9]) if values.size else [np.nan] * 3
        rows.append({"modality": str(modality), "items": int(values.size),
                     "coverage": float(values.size / max(len(weights), 1)),
                     "mean": float(values.mean()) if values.size else None,
                     "p10": float(quantiles[0]) if values.size else None,
                     "median": float(quantiles[1]) if values.size else None,
                     "p90": float(quantiles[2]) if values.size else None})
    return rows


def _not_enough(support: Mapping[str, Any]) -> str:
    return f"Not enough data: {support['reason']}. No metrics are reported for this group."


def _frame_table(frame: pd.DataFrame) -> Table:
    rows = [[_number(v) if isinstance(v, (float, np.floating)) else str(v) for v in row]
            for row in frame.itertuples(index=False)]
    return Table([str(c) for c in frame.columns], rows)


def build_comparison(models: Mapping[str, EmbeddingRecommender], data: "SplitData", *, primary: str,
                     baselines: Sequence[str] = (), ablations: Sequence[str] = (), components: Sequence[str] = (),
                     histories: Mapping[str, pd.DataFrame] | None = None,
                     compression: pd.DataFrame | None = None, aligned: Mapping[str, Any] | None = None,
                     dataset: Mapping[str, Any] | None = None, ks: Sequence[int] = (10, 20),
                     n_resamples: int = 1000, seed: int = 0, split: str = "per-user chronological split (8:1:1)",
                     head_share: float = HEAD_SHARE, title: str = "Evaluation report",
                     min_subgroup: tuple[int, int] = (MIN_SUBGROUP_INTERACTIONS, MIN_SUBGROUP_USERS),
                     selection: Mapping[str, Any] | None = None) -> Comparison:
    """Evaluate ``models`` on ``data``'s test split and build the report.

    ``baselines`` and ``ablations`` name models of ``models``; every other model except ``primary``
    is a *variant* (e.g. a compressed copy), except ``components``: models the primary one is built from
    (reported, not tested as baselines). ``selection`` (``{"selected", "reason", "validation": DataFrame,
    "searches": DataFrame}``) adds the model-selection section: which model ships and why, from
    validation only. ``histories`` maps a model (or ``"alignment"``) to its
    per-epoch training history; ``compression`` is the compressed-model stats table; ``aligned`` is
    the ``aligned_item_embeddings`` value (``fused`` gives the item features of intra-list diversity;
    ``weights``/``present``/``modalities`` the modality-weight plot); ``dataset`` is copied into
    ``metrics["dataset"]`` and completed with the split's counts.

    ``metrics`` always has ``primary_model``, ``baselines``, ``ablations``, ``variants``, ``models``
    (every model, each with ``recall@K_ci`` and ``ndcg@K_ci``, ``K = max(ks)``, and
    ``significant_vs_best_baseline`` when there is a baseline), ``significance``, ``cold_start``,
    ``long_tail``, ``compression`` and ``modality_weights``.
    """
    if not models:
        raise ValueError("models is empty: nothing to compare")
    baselines, ablations = list(baselines), list(ablations)
    roles = _roles(models, primary, baselines, ablations, components)
    aligned = _check_aligned(aligned, data.n_items)
    max_k, other_ks = max(ks), sorted(k for k in ks if k != max(ks))
    ordered = {name: models[name] for name in roles}
    results = evaluate_models(ordered, data, ks=ks, primary=primary, baselines=baselines, n_resamples=n_resamples,
                              seed=seed, split=split, head_share=head_share, min_subgroup=min_subgroup,
                              item_features=None if aligned is None else np.asarray(aligned["fused"]))
    significance = results.get("significance")
    best = significance["best_baseline"] if significance else None
    groups = results["popularity_groups"]
    weight_stats = modality_weight_stats(aligned) if aligned is not None else []
    metrics: dict[str, Any] = {
        "dataset": {**(dataset or {}), "users": data.n_users, "items": data.n_items,
                    "cold_items": groups["cold_items"], "cold_test_interactions": results["cold_test_interactions"],
                    "head_items": groups["head_items"], "tail_items": groups["tail_items"],
                    "tail_test_interactions": groups["tail_test_interactions"], "head_share": head_share},
        "support": results["support"],
        "protocol": results["protocol"],
        "primary_model": primary,
        "baselines": baselines,
        "ablations": ablations,
        "components": [name for name, role in roles.items() if role == "component"],
        "variants": [name for name, role in roles.items() if role == "variant"],
        "models": results["models"],
        "significance": significance,
        "cold_start": results["cold_start"],
        "long_tail": results["long_tail"],
        "compression": [] if compression is None else compression.to_dict(orient="records"),
        "modality_weights": weight_stats,
    }

    # ----------------------------------------------------------------------------------- tables
    def role_label(name: str) -> str:
        return "baseline (best)" if name == best else roles[name]

    def marked(name: str, metric: str) -> bool:
        return bool(name != best and results["models"][name].get("significant_vs_best_baseline", {}).get(metric))

    def with_mark(name: str, metric: str) -> str:
        value = _number(results["models"][name].get(metric))
        return value + SIGNIFICANCE_MARK if marked(name, metric) else value

    names = list(roles)
    bold = frozenset([names.index(primary)])
    extra = [c for c in ("intra_list_diversity", "tail_share") if f"{c}@{max_k}" in results["models"][primary]]
    plain = ["precision", "f1", "map", "hit_ratio", "coverage", "novelty", "personalization", *extra]
    recall, ndcg = f"recall@{max_k}", f"ndcg@{max_k}"
    note = (f"{SIGNIFICANCE_MARK} differs significantly from the best baseline ({best}): paired bootstrap over test "
            f"users, 95% interval of the difference excludes 0. Intervals: 95% percentile bootstrap."
            if best else "No baseline: no significance test.")
    main_table = Table(
        ["model", "role", recall, "95% CI", ndcg, "95% CI", *[f"{m}@{max_k}" for m in plain]],
        [[name, role_label(name), with_mark(name, recall), _interval(results["models"][name].get(f"{recall}_ci")),
          with_mark(name, ndcg), _interval(results["models"][name].get(f"{ndcg}_ci")),
          *[_number(results["models"][name].get(f"{m}@{max_k}")) for m in plain]] for name in names],
        bold, note)
    other_tables = {k: Table(["model", "role", *[f"{m}@{k}" for m in ("recall", "ndcg", *plain)]],
                             [[name, role_label(name), *[_number(results["models"][name].get(f"{m}@{k}"))
                                                         for m in ("recall", "ndcg", *plain)]] for name in names],
                             bold) for k in other_ks}

    if significance:
        tests = significance["models"]
        significance_table = Table(
            ["model", f"Δ {recall}", "95% CI", "p", f"Δ {ndcg}", "95% CI", "p"],
            [[name, *[cell for metric in (recall, ndcg) for cell in (
                f"{tests[name][metric]['difference']:+.4f}" + (SIGNIFICANCE_MARK if tests[name][metric]["significant"]
                                                              else ""),
                "[{:+.4f}, {:+.4f}]".format(*tests[name][metric]["ci"]), f"{tests[name][metric]['p_value']:.3f}")]]
             for name in names if name != best],
            frozenset([[n for n in names if n != best].index(primary)]) if primary != best else frozenset(),
            f"Each model minus {best} on the same test users ({n_resamples} paired resamples; no correction for "
            f"multiple comparisons).")
    else:
        significance_table = None

    def section_table(section: dict[str, dict], columns: Sequence[str]) -> Table:
        present = [n for n in names if n in section]
        return Table(["model", "role", *columns],
                     [[n, role_label(n), *[_number(section[n].get(c)) for c in columns]] for n in present],
                     frozenset([present.index(primary)]) if primary in present else frozenset())

    section_ks = sorted(set(ks))
    cold_columns = [f"{m}@{k}" for k in section_ks for m in ("recall", "ndcg", "precision", "hit_ratio")]
    cold_table = section_table(results["cold_start"], cold_columns) if results["cold_start"] else None
    tail_table = (section_table(results["long_tail"], cold_columns + [f"tail_share@{k}" for k in section_ks])
                  if results["long_tail"] else None)

    if ablations:
        def parent(name: str) -> str:
            """An ablation ``<model>-<what>`` is compared with ``<model>`` when it is in the report."""
            head = name.split("-", 1)[0]
            return head if head in results["models"] and head != name else primary

        def delta(name: str, section: dict, metric: str) -> str:
            reference = parent(name)
            if name not in section or reference not in section:
                return "n/a"
            return f"{section[name][metric] - section[reference][metric]:+.4f}"

        parents = list(dict.fromkeys([primary, *[parent(n) for n in ablations]]))
        ablation_table = Table(
            ["model", "compared with", recall, f"Δ {recall}", ndcg, f"Δ {ndcg}",
             f"cold {recall}", "Δ", f"long-tail {recall}", "Δ"],
            [[name, "" if name in parents else parent(name), _number(results["models"][name][recall]),
              "" if name in parents else delta(name, results["models"], recall),
              _number(results["models"][name][ndcg]), "" if name in parents else delta(name, results["models"], ndcg),
              _number(results["cold_start"].get(name, {}).get(recall)),
              "" if name in parents else delta(name, results["cold_start"], recall),
              _number(results["long_tail"].get(name, {}).get(recall)),
              "" if name in parents else delta(name, results["long_tail"], recall)]
             for name in [*parents, *ablations]],
            frozenset([0]), f"Δ = ablation minus the model it is an ablation of ({', '.join(parents)}).")
    else:
        ablation_table = None

    weights_table = (Table(["modality", "items", "coverage", "mean", "p10", "median", "p90"],
                           [[r["modality"], str(r["items"]), _number(r["coverage"]),
                             *[_number(r[c]) for c in ("mean", "p10", "median", "p90")]] for r in weight_stats])
                     if weight_stats else None)
    compression_table = _frame_table(compression) if compression is not None and len(compression) else None

    # ---------------------------------------------------------------------------------- figures
    figures: dict[str, bytes] = {}
    bar_name = f"recall_at_{max_k}_ci"
    figures[bar_name] = interval_bar_png(
        names, [results["models"][n][recall] for n in names], [results["models"][n][f"{recall}_ci"] for n in names],
        [roles[n] for n in names], recall, marked=[marked(n, recall) for n in names])
    if aligned is not None and len(aligned["modalities"]):
        figures["modality_weights"] = modality_weights_png(aligned["weights"], aligned["present"],
                                                           aligned["modalities"])
    curves = {name: h for name, h in (histories or {}).items() if isinstance(h, pd.DataFrame) and len(h)}
    if curves:
        figures["training_curves"] = training_curves_png(curves)

    # ------------------------------------------------------------------------------- selection
    selection_blocks: list = []
    if selection is not None:
        validation = selection["validation"]
        chosen = selection["selected"]
        test_of_chosen = results["models"].get(chosen, {})
        metrics["selection"] = {"selected": chosen, "reason": selection["reason"],
                                "validation": validation.to_dict(orient="records"),
                                "searches": selection["searches"].to_dict(orient="records")}
        validation_table = Table(
            ["model", *validation.columns[1:], f"test {recall}", f"test {ndcg}"],
            [[str(row["model"]), *[_number(row[c]) for c in validation.columns[1:]],
              _number(results["models"].get(row["model"], {}).get(recall)),
              _number(results["models"].get(row["model"], {}).get(ndcg))] for _, row in validation.iterrows()],
            frozenset([int(np.flatnonzero(validation["model"].to_numpy() == chosen)[0])]),
            "Chosen on validation only; the test columns are for the record, they played no part.")
        searches = selection["searches"]
        search_table = Table([str(c) for c in searches.columns],
                             [[_number(v) if isinstance(v, float) else str(v) for v in row]
                              for row in searches.itertuples(index=False)]) if len(searches) else None
        selection_blocks = [Heading("Model selection"),
                            Paragraph(f"Shipped (registered as the challenger): {chosen}, because "
                                      f"{selection['reason']}. Its test {recall}: "
                                      f"{_number(test_of_chosen.get(recall))}."),
                            validation_table]
        if search_table is not None:
            selection_blocks += [Paragraph("Each model's own settings were chosen on validation within a time "
                                           "budget (the settings tried, the seconds spent, what was chosen):"),
                                 search_table]
        tables_extra = {"selection": validation_table.markdown(),
                        **({"searches": search_table.markdown()} if search_table is not None else {})}
    else:
        tables_extra = {}

    # ----------------------------------------------------------------------------------- report
    ds = metrics["dataset"]
    spec = f"{ds['spec']} " if "spec" in ds else ""
    blocks: list = [
        Heading(title, 1),
        Paragraph(f"Dataset {spec}({data.n_users} users, {data.n_items} items). Primary model: {primary}; "
                  f"baselines: {', '.join(baselines) or 'none'}; components of the primary model: "
                  f"{', '.join(metrics['components']) or 'none'}; ablations: {', '.join(ablations) or 'none'}; "
                  f"variants: {', '.join(metrics['variants']) or 'none'}."),
        Paragraph(results["protocol"]),
        *selection_blocks,
        Heading("All items (full ranking)"), main_table,
        Figure(bar_name, figures[bar_name], f"{recall} per model with 95% bootstrap intervals"),
    ]
    for k in other_ks:
        blocks += [Heading(f"All items at {k}", 3), other_tables[k]]
    blocks += [Heading("Significance vs the best baseline")]
    blocks += [significance_table] if significance_table else [Paragraph("No baseline to compare with.")]
    blocks += [Heading("Ablations")]
    blocks += [ablation_table] if ablation_table else [Paragraph("No ablation models in this report.")]
    support = results["support"]
    blocks += [Heading("Cold-start items"),
               Paragraph(f"{ds['cold_items']} items have no training interaction; {ds['cold_test_interactions']} "
                         f"test interactions on them from {support['cold_start']['users']} test users, ranked "
                         "among the cold items only.")]
    blocks += [cold_table] if cold_table else [Paragraph(_not_enough(support["cold_start"]))]
    blocks += [Heading("Long-tail items"),
               Paragraph(f"Head: the {ds['head_items']} most popular items, which together hold {head_share:.0%} "
                         f"of the training interactions. Long tail: the other {ds['tail_items']} items with a "
                         f"training interaction ({ds['tail_test_interactions']} test interactions from "
                         f"{support['long_tail']['users']} test users), evaluated on "
                         "the full ranking with the truth restricted to them. tail_share@k: share of the "
                         "recommended slots holding long-tail items.")]
    blocks += [tail_table] if tail_table else [Paragraph(_not_enough(support["long_tail"]))]
    if compression_table:
        blocks += [Heading("Compression (validation split)"), compression_table]
    blocks += [Heading("Modality weights")]
    if weights_table:
        blocks += [Paragraph("Attention-fusion weight of each modality, over the items that have it."),
                   weights_table]
        if "modality_weights" in figures:
            blocks.append(Figure("modality_weights", figures["modality_weights"], "modality-weight distribution"))
    else:
        blocks.append(Paragraph("No aligned item embeddings given."))
    blocks += [Heading("Training curves")]
    blocks += ([Figure("training_curves", figures["training_curves"], "training loss and validation metrics")]
               if curves else [Paragraph("No training histories given.")])

    tables = {"comparison": main_table.markdown(),
              **{f"comparison_at_{k}": other_tables[k].markdown() for k in other_ks},
              "significance": significance_table.markdown() if significance_table else "_no baseline_",
              "ablations": ablation_table.markdown() if ablation_table else "_no ablations_",
              "cold_start": cold_table.markdown() if cold_table else f"_{_not_enough(support['cold_start'])}_",
              "long_tail": tail_table.markdown() if tail_table else f"_{_not_enough(support['long_tail'])}_"}
    tables.update(tables_extra)
    if weights_table:
        tables["modality_weights"] = weights_table.markdown()
    return Comparison(metrics, render_markdown(blocks), render_html(blocks, title), figures, tables)
