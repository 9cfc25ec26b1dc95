"""``python -m mm_pipeline.cli demo|run|report``: run the graph in the project's Dagster instance.

``demo`` executes in this process (the embedded path); ``run`` hands the steps to the job's executor
(``$MM_PIPELINE_EXECUTOR``: in-process, multiprocess, or the Celery workers). Both wait for a free run
slot under the instance's ``max_concurrent_runs``, like runs launched from the UI
(:mod:`mm_pipeline.defs.admission`).
"""

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
    home = settings.dagster_home(paths)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    link, source = home / "dagster.yaml", settings.REPO_ROOT / "dagster.yaml"
    if source.exists() and not link.exists():
        link.symlink_to(source)
    return home


def clean_written_leftovers(paths: settings.ProjectPaths) -> None:
    """What killed writes left in the folders the pipeline writes (``.<name>.tmp-*``, ``.old-*``), once old
    enough to have no live writer: assets (the inbox copies too), reports, quarantine tables and the generated
    datasets under ``data/`` (only these staging names are removed there; the datasets are left alone)."""
    from mm_pipeline.storage import clean_leftovers

    for folder in (paths.assets, paths.reports, paths.home / "quarantine", paths.data):
        clean_leftovers(folder)


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
    settings.prefer_offline_models()
    paths = settings.project_paths().ensure()
    prepare_dagster_home(paths)
    import dagster as dg

    from mm_pipeline.definitions import defs

    from mm_pipeline.defs.admission import admitted_run

    started = time.perf_counter()
    clean_written_leftovers(paths)
    with dg.DagsterInstance.get() as instance:
        result = admitted_run(instance, lambda tags: defs.resolve_job_def(job).execute_in_process(
            instance=instance, raise_on_error=False, tags=tags,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}, **dataset_run_config(dataset)}))
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


def dataset_run_config(dataset: str | None) -> dict:
    """Run config choosing ``dataset`` (the ``pipeline`` resource's config); empty: the resource's own
    (``$MM_PIPELINE_DATASET`` or builtin:default)."""
    return {"resources": {"pipeline": {"config": {"dataset": dataset}}}} if dataset else {}


def run_job(job: str, dataset: str | None, config_file: str | None, from_failure: str | None = None) -> int:
    """``job`` through its own executor (``$MM_PIPELINE_EXECUTOR``) in the instance of ``$DAGSTER_HOME``,
    once a run slot is free. ``dataset`` goes into the run config (the ``pipeline`` resource), so steps
    on workers with another environment still read it. Prints the run id and where its report is."""
    import dagster as dg
    import yaml

    from mm_pipeline import definitions
    from mm_pipeline.defs.admission import admitted_run

    settings.prefer_offline_models()
    paths = settings.project_paths().ensure()
    prepare_dagster_home(paths)
    run_config: dict = {}
    if config_file:
        try:
            run_config = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            print(f"--config {config_file}: cannot read it as YAML run config ({exc})", file=sys.stderr)
            return 2
        if not isinstance(run_config, dict):
            print(f"--config {config_file}: must hold a run-config mapping (ops:, resources:)", file=sys.stderr)
            return 2
    if dataset:
        resources = run_config.setdefault("resources", {})
        pipeline = resources.setdefault("pipeline", {}).setdefault("config", {})
        pipeline["dataset"] = dataset
    clean_written_leftovers(paths)
    with dg.DagsterInstance.get() as instance:
        # From failure: the steps that failed or never finished in that run; the others' outputs are read
        # from the versions that run wrote.
        reexecution = dg.ReexecutionOptions.from_failure(from_failure, instance) if from_failure else None
        result = admitted_run(instance, lambda tags: dg.execute_job(
            dg.reconstructable(definitions.JOB_LOADERS[job]), instance=instance, run_config=run_config,
            tags=tags, reexecution_options=reexecution))
    print(f"Dagster run {result.run_id}: {'success' if result.success else 'FAILED'}")
    print(f"Report:     {paths.reports / 'runs' / result.run_id} (reports/latest is the newest run's)")
    return 0 if result.success else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mm_pipeline.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize every asset and print the metrics")
    demo.add_argument("--dataset", help="dataset spec (default: $MM_PIPELINE_DATASET or builtin:default)")
    demo.add_argument("--job", default="full_pipeline", choices=("full_pipeline", "research_pipeline"),
                      help="research_pipeline adds the ablations of the primary model (several minutes more)")
    run = sub.add_parser("run", help="run a job through its executor ($MM_PIPELINE_EXECUTOR, e.g. celery)")
    run.add_argument("--job", default="full_pipeline", choices=("full_pipeline", "research_pipeline"))
    run.add_argument("--dataset", help="dataset spec for this run (run config; default: the workers' "
                                       "$MM_PIPELINE_DATASET or builtin:default)")
    run.add_argument("--config", help="a YAML run-config file (ops:, resources:)")
    run.add_argument("--from-failure", metavar="RUN_ID", help="re-execute that failed run from its failure")
    sub.add_parser("report", help="print the latest metrics table")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args.dataset, args.job)
    if args.command == "run":
        return run_job(args.job, args.dataset, args.config, args.from_failure)
    print_report(settings.project_paths().reports / "latest" / "metrics.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
