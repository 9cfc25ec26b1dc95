"""``python -m mm_pipeline.cli demo|report``: run the whole graph in the project's Dagster instance."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from mm_pipeline import settings

TABLE_COLUMNS = ("recall@20", "ndcg@20", "precision@20", "f1@20", "coverage@20", "novelty@20")


def prepare_dagster_home(paths: settings.ProjectPaths) -> Path:
    """Point ``DAGSTER_HOME`` at the project home and link the project's ``dagster.yaml`` into it."""
    home = Path(os.environ.get("DAGSTER_HOME") or paths.dagster)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    link, source = home / "dagster.yaml", settings.REPO_ROOT / "dagster.yaml"
    if source.exists() and not link.exists():
        link.symlink_to(source)
    return home


def format_table(models: dict[str, dict], columns=TABLE_COLUMNS) -> str:
    name_width = max([len("model")] + [len(n) for n in models])
    lines = ["model".ljust(name_width) + "".join(c.rjust(14) for c in columns)]
    for name, values in models.items():
        lines.append(name.ljust(name_width) + "".join(
            (f"{values[c]:.4f}" if c in values else "n/a").rjust(14) for c in columns))
    return "\n".join(lines)


def print_report(metrics_path: Path) -> None:
    metrics = json.loads(metrics_path.read_text())
    ds = metrics["dataset"]
    print(f"\nDataset {ds['spec']}: {ds['users']} users, {ds['items']} items, {ds['interactions']} interactions, "
          f"{ds['cold_items']} cold-start items")
    print("\nTest, full ranking over all items:")
    print(format_table(metrics["models"]))
    support = metrics.get("support", {}).get("cold_start")
    if metrics.get("cold_start"):
        about = f" {support['interactions']} test interactions, {support['users']} users" if support else ""
        print(f"\nTest, cold-start items (ranked among cold items;{about}):")
        print(format_table(metrics["cold_start"], ("recall@20", "ndcg@20", "precision@20", "hit_ratio@20")))
    elif support and support["interactions"]:
        print(f"\nTest, cold-start items: not enough data ({support['reason']})")


def run_demo(dataset: str | None, job: str = "full_pipeline") -> int:
    if dataset:
        os.environ["MM_PIPELINE_DATASET"] = dataset
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    paths = settings.project_paths().ensure()
    prepare_dagster_home(paths)
    import dagster as dg

    from mm_pipeline.definitions import defs

    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}})
    elapsed = time.perf_counter() - started
    assets = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    print("\nStage timings (s):")
    check_seconds, checks = 0.0, 0
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            seconds = event.event_specific_data.duration_ms / 1000
            if event.step_key in assets:
                print(f"  {event.step_key:<28}{seconds:8.1f}")
            else:
                check_seconds, checks = check_seconds + seconds, checks + 1
    if checks:
        print(f"  {f'asset checks ({checks})':<28}{check_seconds:8.1f}")
    print(f"  {'total (incl. start-up)':<28}{elapsed:8.1f}")
    if not result.success:
        print("\nThe pipeline failed; open the run in the Dagster UI (make ui) for the error.", file=sys.stderr)
        return 1
    print_report(paths.reports / "latest" / "metrics.json")
    print(f"\nReports:    {paths.reports / 'latest'}  (metrics.json, report.md, report.html)")
    print(f"Dagster:    run {result.run_id}; browse it with `make ui` -> http://127.0.0.1:3000")
    print(f"MLflow:     {settings.mlflow_tracking_uri(paths)}; browse it with `make mlflow-ui` -> http://127.0.0.1:5000")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mm_pipeline.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize every asset and print the metrics")
    demo.add_argument("--dataset", help="dataset spec (default: $MM_PIPELINE_DATASET or builtin:default)")
    demo.add_argument("--job", default="full_pipeline", choices=("full_pipeline", "research_pipeline"),
                      help="research_pipeline adds the ablations of the primary model (several minutes more)")
    sub.add_parser("report", help="print the latest metrics table")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args.dataset, args.job)
    print_report(settings.project_paths().reports / "latest" / "metrics.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
