"""The results tables of docs/experiments.md: every model's test recall@20 and NDCG@20, with intervals, from reports.

    python benchmarks/results_table.py /runs/ml100k/reports/latest/metrics.json /runs/beauty/...

Each argument is a ``metrics.json`` written by ``make demo`` / ``make research`` (``--home`` takes project
homes instead). Prints one markdown table per dataset: the models in report order with their role, test
recall@20 and NDCG@20 with 95% bootstrap intervals, the paired difference of the primary model against
the best baseline, the cold-start sample size and recall@20, and which model validation selected.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ci(values: dict, metric: str) -> str:
    lo, hi = values.get(f"{metric}_ci", (float("nan"), float("nan")))
    return f"{values[metric]:.4f} [{lo:.4f}, {hi:.4f}]"


def dataset_table(metrics: dict) -> str:
    primary = metrics["primary_model"]
    roles = {
        **{m: "baseline" for m in metrics["baselines"]},
        **{m: "component" for m in metrics.get("components", [])},
        primary: "**primary**",
    }
    significance = metrics.get("significance") or {}
    best = significance.get("best_baseline")
    cold = metrics.get("cold_start", {})
    ds = metrics["dataset"]
    support = metrics.get("support", {}).get("cold_start", {})
    lines = [
        f"**{ds.get('spec', ds.get('name'))}**: {ds['users']} users, {ds['items']} items, "
        f"{ds['interactions']} interactions ({ds.get('train_interactions', '?')} train / "
        f"{ds.get('test_interactions', '?')} test), {ds['cold_items']} cold items",
        "",
        "| model | role | recall@20 [95% CI] | NDCG@20 [95% CI] | cold-start recall@20 |",
        "|---|---|---|---|---|",
    ]
    for name, values in metrics["models"].items():
        if name not in roles:
            continue  # ablations and compressed variants have their own tables in the report
        role = roles[name] + (" (best)" if name == best else "")
        cold_value = f"{cold[name]['recall@20']:.4f}" if name in cold else "n/a"
        row = (
            f"| {'**' + name + '**' if name == primary else name} | {role} | {_ci(values, 'recall@20')} | "
            f"{_ci(values, 'ndcg@20')} | {cold_value} |"
        )
        lines.append(row)
    if best and significance.get("recall@20"):
        parts = [f"{primary} − {best}:"]
        for metric in ("recall@20", "ndcg@20"):
            test = significance[metric]
            lo, hi = test["ci"]
            mark = " (significant)" if test["significant"] else " (not significant)"
            parts.append(f"{metric} {test['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}")
        lines += ["", " ".join(parts[:1]) + " " + "; ".join(parts[1:]) + "."]
    if support:
        lines.append(
            f"Cold start: {support['interactions']} test interactions from {support['users']} users"
            + ("" if support.get("enough") else f": not enough data ({support['reason']})")
            + "."
        )
    if metrics.get("selection"):
        lines.append(f"Shipped (best on validation): {metrics['selection']['selected']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="metrics.json files (or project homes with --home)")
    parser.add_argument("--home", action="store_true", help="the paths are project homes")
    args = parser.parse_args(argv)
    tables = []
    for path in map(Path, args.paths):
        metrics_path = path / "reports" / "latest" / "metrics.json" if args.home else path
        tables.append(dataset_table(json.loads(metrics_path.read_text())))
    out = "\n\n".join(tables)
    print(out)
    return out


if __name__ == "__main__":
    main()
