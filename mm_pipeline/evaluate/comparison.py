"""The whole model comparison, computed: metrics, intervals, significance, cold-start and long-tail
results with their support, as a typed :class:`ModelComparison` (numbers and DataFrames, no formatting).

:func:`compare_models` evaluates trained models on one split; :mod:`mm_pipeline.evaluate.report` renders
the result (markdown, self-contained HTML, figures), and its ``build_comparison`` does both, which is
what the ``evaluation_report`` asset runs; a report with ablation models is the same call with
``ablations=[...]``. Every model gets the same protocol (:func:`mm_pipeline.evaluate.protocol.evaluate_models`)
and, for intra-list diversity, the same item representation (the fused aligned content embeddings), so the
numbers are comparable across rows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mm_pipeline.evaluate.protocol import (
    HEAD_SHARE,
    MIN_SUBGROUP_INTERACTIONS,
    MIN_SUBGROUP_USERS,
    ModelsOnDemand,
    evaluate_models,
)
from mm_pipeline.recommend.base import EmbeddingRecommender

if TYPE_CHECKING:
    from mm_pipeline.data.types import SplitData
    from mm_pipeline.recommend.ranking import SplitRankings

PLAIN_METRICS = ("precision", "f1", "map", "hit_ratio", "coverage", "novelty", "personalization")
SUBGROUP_METRICS = ("recall", "ndcg", "precision", "hit_ratio")


@dataclass(frozen=True)
class SelectionResult:
    """Which model ships and why, from validation only: ``validation`` (one row per candidate: ``model``, its
    validation metrics, then ``test <recall@K>`` / ``test <ndcg@K>`` for the record) and ``searches`` (what
    each model's own validation search tried and chose)."""

    selected: str
    reason: str
    validation: pd.DataFrame
    searches: pd.DataFrame


@dataclass(frozen=True)
class ModelComparison:
    """What :func:`compare_models` computes; :func:`mm_pipeline.evaluate.report.render_comparison` renders it.

    ``metrics`` is the content of ``metrics.json``. The tables hold numbers (NaN: not measured), one row per
    model in report order (``roles``' order), with columns ``model`` and ``role``:

    * ``overall[k]``: ``recall@k``, ``ndcg@k`` and :meth:`plain_metrics` at ``k`` for every ``k`` of ``ks``;
      at the largest ``k`` also ``<m>_ci_low`` / ``<m>_ci_high`` (95% bootstrap) and ``<m>_significant``
      (differs from the best baseline) for ``m`` = recall and NDCG;
    * ``significance``: per model other than the best baseline and per metric (``metric``), the paired
      difference to it, its interval, ``p_value`` and ``significant`` (``None`` without a baseline);
    * ``cold_start`` / ``long_tail``: the subgroup metrics of the models measured on it (``None`` when the
      support, ``metrics["support"]``, says there is not enough data);
    * ``ablations``: each ablation next to the model it ablates (``compared_with``; empty on that model's
      own row) with the differences (``None`` without ablations);
    * ``modality_weights`` and ``compression``: per modality / per compressed variant.
    """

    metrics: dict[str, Any]
    roles: dict[str, str]
    primary: str
    best_baseline: str | None
    ks: tuple[int, ...]
    n_resamples: int
    overall: dict[int, pd.DataFrame]
    significance: pd.DataFrame | None
    cold_start: pd.DataFrame | None
    long_tail: pd.DataFrame | None
    ablations: pd.DataFrame | None
    modality_weights: pd.DataFrame | None
    compression: pd.DataFrame | None
    selection: SelectionResult | None = None
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    aligned: Mapping[str, Any] | None = None  # weights, present, modalities: the modality-weight figure
    # The primary model's per-user test metrics at the largest k (user_idx, recall@k, ndcg@k): test accuracy
    # per group of users (accuracy_by_interest_from) without ranking again.
    primary_per_user: dict[str, np.ndarray] | None = None

    @property
    def max_k(self) -> int:
        return max(self.ks)

    @property
    def models(self) -> list[str]:
        return list(self.roles)

    @property
    def plain_metrics(self) -> list[str]:
        """The metrics besides recall and NDCG (diversity and tail share when the evaluation had them)."""
        return plain_metrics(self.metrics["models"][self.primary], self.max_k)

    def role_label(self, name: str) -> str:
        return "baseline (best)" if name == self.best_baseline else self.roles[name]


def plain_metrics(primary_metrics: Mapping[str, Any], k: int) -> list[str]:
    """:data:`PLAIN_METRICS`, then intra-list diversity and tail share when the primary model has them at ``k``."""
    return [*PLAIN_METRICS, *[c for c in ("intra_list_diversity", "tail_share") if f"{c}@{k}" in primary_metrics]]


def _value(value: Any) -> float:
    return np.nan if value is None else float(value)


def _roles(
    models: Mapping[str, Any],
    primary: str,
    baselines: Sequence[str],
    ablations: Sequence[str],
    components: Sequence[str] = (),
) -> dict[str, str]:
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
    overlap = {name for i, a in enumerate(groups) for b in groups[i + 1 :] for name in a & b}
    if overlap:
        raise ValueError(
            f"models {sorted(overlap)} are listed in more than one of primary/baselines/ablations/components"
        )
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
            raise ValueError(
                f"aligned[{key!r}] has {np.asarray(aligned[key]).shape[0]} rows but the split has "
                f"{n_items} items; the embeddings come from another dataset"
            )
    return aligned


def modality_weight_stats(aligned: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per modality: share of items that have it and its fusion-weight quantiles over those items."""
    weights = np.asarray(aligned["weights"], dtype=np.float64)
    present = np.asarray(aligned["present"], dtype=bool)
    rows = []
    for column, modality in enumerate(aligned["modalities"]):
        values = weights[present[:, column], column]
        quantiles = np.quantile(values, [0.1, 0.5, 0.9]) if values.size else [np.nan] * 3
        rows.append(
            {
                "modality": str(modality),
                "items": int(values.size),
                "coverage": float(values.size / max(len(weights), 1)),
                "mean": float(values.mean()) if values.size else None,
                "p10": float(quantiles[0]) if values.size else None,
                "median": float(quantiles[1]) if values.size else None,
                "p90": float(quantiles[2]) if values.size else None,
            }
        )
    return rows


def compare_models(
    models: Mapping[str, EmbeddingRecommender],
    data: SplitData,
    *,
    primary: str,
    baselines: Sequence[str] = (),
    ablations: Sequence[str] = (),
    components: Sequence[str] = (),
    histories: Mapping[str, pd.DataFrame] | None = None,
    compression: pd.DataFrame | None = None,
    aligned: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    ks: Sequence[int] = (10, 20),
    n_resamples: int = 1000,
    seed: int = 0,
    split: str = "per-user chronological split (8:1:1)",
    head_share: float = HEAD_SHARE,
    min_subgroup: tuple[int, int] = (MIN_SUBGROUP_INTERACTIONS, MIN_SUBGROUP_USERS),
    selection: Mapping[str, Any] | None = None,
    rankings: Mapping[str, SplitRankings] | None = None,
) -> ModelComparison:
    """Evaluate ``models`` on ``data``'s test split.

    ``baselines`` and ``ablations`` name models of ``models``; every other model except ``primary``
    is a *variant* (e.g. a compressed copy), except ``components``: models the primary one is built from
    (reported, not tested as baselines). ``selection`` (``{"selected", "reason", "validation": DataFrame,
    "searches": DataFrame}``) adds the model-selection result: which model ships and why, from
    validation only. ``histories`` maps a model (or ``"alignment"``) to its
    per-epoch training history; ``compression`` is the compressed-model stats table; ``aligned`` is
    the ``aligned_item_embeddings`` value (``fused`` gives the item features of intra-list diversity;
    ``weights``/``present``/``modalities`` the modality-weight plot); ``dataset`` is copied into
    ``metrics["dataset"]`` and completed with the split's counts. ``rankings`` (name -> the model's
    :func:`~mm_pipeline.evaluate.protocol.rank_for_evaluation`) are read instead of ranking those models again.

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
    # In report order, each model read when it is evaluated (a ModelsOnDemand is built one at a time).
    ordered = ModelsOnDemand({name: functools.partial(models.__getitem__, name) for name in roles})
    results = evaluate_models(
        ordered,
        data,
        ks=ks,
        primary=primary,
        baselines=baselines,
        n_resamples=n_resamples,
        seed=seed,
        split=split,
        head_share=head_share,
        min_subgroup=min_subgroup,
        item_features=None if aligned is None else np.asarray(aligned["fused"]),
        rankings=rankings,
    )
    significance = results.get("significance")
    best = significance["best_baseline"] if significance else None
    groups = results["popularity_groups"]
    weight_stats = modality_weight_stats(aligned) if aligned is not None else []
    metrics: dict[str, Any] = {
        "dataset": {
            **(dataset or {}),
            "users": data.n_users,
            "items": data.n_items,
            "cold_items": groups["cold_items"],
            "cold_test_interactions": results["cold_test_interactions"],
            "head_items": groups["head_items"],
            "tail_items": groups["tail_items"],
            "tail_test_interactions": groups["tail_test_interactions"],
            "head_share": head_share,
        },
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
    chosen = None
    if selection is not None:
        chosen = _selection(selection, results["models"], max(ks))
        metrics["selection"] = {
            "selected": chosen.selected,
            "reason": chosen.reason,
            "validation": selection["validation"].to_dict(orient="records"),
            "searches": chosen.searches.to_dict(orient="records"),
        }
    tables = _Tables(results, roles, primary, best, ks)
    return ModelComparison(
        metrics=metrics,
        roles=roles,
        primary=primary,
        best_baseline=best,
        ks=tuple(ks),
        n_resamples=n_resamples,
        overall={k: tables.overall(k) for k in sorted(set(ks))},
        significance=tables.significance() if significance else None,
        cold_start=tables.subgroup(results["cold_start"], []) if results["cold_start"] else None,
        long_tail=tables.subgroup(results["long_tail"], ["tail_share"]) if results["long_tail"] else None,
        ablations=tables.ablations(ablations) if ablations else None,
        modality_weights=pd.DataFrame(weight_stats) if weight_stats else None,
        compression=compression if compression is not None and len(compression) else None,
        selection=chosen,
        histories={name: h for name, h in (histories or {}).items() if isinstance(h, pd.DataFrame) and len(h)},
        aligned=None if aligned is None else {k: aligned[k] for k in ("weights", "present", "modalities")},
        primary_per_user=results["per_user"].get(primary),
    )


def _selection(selection: Mapping[str, Any], tested: Mapping[str, Mapping[str, float]], k: int) -> SelectionResult:
    """The selection summary, its validation table completed with each candidate's test recall/NDCG@k."""
    validation = selection["validation"].copy()
    for metric in (f"recall@{k}", f"ndcg@{k}"):
        validation[f"test {metric}"] = [_value(tested.get(m, {}).get(metric)) for m in validation["model"]]
    return SelectionResult(str(selection["selected"]), str(selection["reason"]), validation, selection["searches"])


class _Tables:
    """The comparison's tables from ``evaluate_models``' results (numbers only; the report formats them)."""

    def __init__(
        self, results: Mapping[str, Any], roles: Mapping[str, str], primary: str, best: str | None, ks: Sequence[int]
    ):
        self.results, self.roles, self.primary, self.best = results, roles, primary, best
        self.max_k = max(ks)
        self.section_ks = sorted(set(ks))
        self.plain = plain_metrics(results["models"][primary], self.max_k)

    def _frame(self, names: Sequence[str], columns: dict[str, list]) -> pd.DataFrame:
        return pd.DataFrame({"model": list(names), "role": [self.roles[n] for n in names], **columns})

    def overall(self, k: int) -> pd.DataFrame:
        models, names = self.results["models"], list(self.roles)
        columns = {
            f"{m}@{k}": [_value(models[n].get(f"{m}@{k}")) for n in names] for m in ("recall", "ndcg", *self.plain)
        }
        if k == self.max_k:
            for metric in (f"recall@{k}", f"ndcg@{k}"):
                bounds = [models[n].get(f"{metric}_ci") for n in names]
                columns[f"{metric}_ci_low"] = [np.nan if b is None else float(b[0]) for b in bounds]
                columns[f"{metric}_ci_high"] = [np.nan if b is None else float(b[1]) for b in bounds]
                columns[f"{metric}_significant"] = [
                    bool(n != self.best and models[n].get("significant_vs_best_baseline", {}).get(metric))
                    for n in names
                ]
        return self._frame(names, columns)

    def significance(self) -> pd.DataFrame:
        tests = self.results["significance"]["models"]
        rows = [
            {
                "model": name,
                "metric": metric,
                "difference": float(tests[name][metric]["difference"]),
                "ci_low": float(tests[name][metric]["ci"][0]),
                "ci_high": float(tests[name][metric]["ci"][1]),
                "p_value": float(tests[name][metric]["p_value"]),
                "significant": bool(tests[name][metric]["significant"]),
            }
            for name in self.roles
            if name != self.best
            for metric in (f"recall@{self.max_k}", f"ndcg@{self.max_k}")
        ]
        return pd.DataFrame(
            rows, columns=["model", "metric", "difference", "ci_low", "ci_high", "p_value", "significant"]
        )

    def subgroup(self, section: Mapping[str, Mapping[str, float]], extra: Sequence[str]) -> pd.DataFrame:
        names = [n for n in self.roles if n in section]
        columns = [f"{m}@{k}" for k in self.section_ks for m in SUBGROUP_METRICS]
        columns += [f"{m}@{k}" for m in extra for k in self.section_ks]
        return self._frame(names, {c: [_value(section[n].get(c)) for n in names] for c in columns})

    def ablations(self, ablations: Sequence[str]) -> pd.DataFrame:
        models, cold, tail = self.results["models"], self.results["cold_start"], self.results["long_tail"]
        recall, ndcg = f"recall@{self.max_k}", f"ndcg@{self.max_k}"

        def parent(name: str) -> str:
            """An ablation ``<model>-<what>`` is compared with ``<model>`` when it is in the report."""
            head = name.split("-", 1)[0]
            return head if head in models and head != name else self.primary

        def delta(name: str, section: Mapping[str, Mapping[str, float]], metric: str) -> float:
            reference = parent(name)
            if name not in section or reference not in section:
                return np.nan
            return float(section[name][metric] - section[reference][metric])

        parents = list(dict.fromkeys([self.primary, *[parent(n) for n in ablations]]))
        rows = []
        for name in [*parents, *ablations]:
            own = name in parents
            rows.append(
                {
                    "model": name,
                    "compared_with": "" if own else parent(name),
                    recall: _value(models[name][recall]),
                    f"{recall}_delta": np.nan if own else delta(name, models, recall),
                    ndcg: _value(models[name][ndcg]),
                    f"{ndcg}_delta": np.nan if own else delta(name, models, ndcg),
                    f"cold_{recall}": _value(cold.get(name, {}).get(recall)),
                    f"cold_{recall}_delta": np.nan if own else delta(name, cold, recall),
                    f"tail_{recall}": _value(tail.get(name, {}).get(recall)),
                    f"tail_{recall}_delta": np.nan if own else delta(name, tail, recall),
                }
            )
        return pd.DataFrame(rows)
