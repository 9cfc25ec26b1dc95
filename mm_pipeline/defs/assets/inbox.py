"""Inbox interactions: each new interaction file (by content) becomes one partition of
``inbox_interactions``; ``raw_interactions`` appends every materialized partition to the source's.

The partitions are dynamic (``inbox_files``, key = the file's SHA-256): ``new_interactions_sensor``
adds one per new file content and requests an ``inbox_retrain`` run for it. The domain rules
(reading, the write-once store, appending) are in :mod:`mm_pipeline.datasets.inbox`.

This module is deliberately *not* in ``build.ASSET_MODULES``: ``all_assets()`` stays the
unpartitioned graph (``full_pipeline``, ``dg.materialize`` in tests), and ``raw_interactions`` only
``deps`` on this asset, reading the stored partitions that the Dagster instance records as
materialized. With no partition (a fresh install) nothing changes.
"""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from mm_pipeline.datasets.inbox import (
    ORIGIN_COLUMN,
    append_inbox,
    check_digest,
    find_inbox_file,
    inbox_dir,
    ingest_file,
    load_partition,
)
from mm_pipeline.datasets.schema import DataError
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.defs.resources import PipelineResource
from mm_pipeline.privacy.forget_list import ForgetFilter, ForgetListError
from mm_pipeline.privacy.forget_list import forget_filter as _forget_filter

GROUP = "raw"
INBOX_PARTITIONS_NAME = "inbox_files"
INBOX_ASSET_KEY = dg.AssetKey("inbox_interactions")
inbox_partitions = dg.DynamicPartitionsDefinition(name=INBOX_PARTITIONS_NAME)


def inbox_store(pipeline: PipelineResource) -> Path:
    """Where the partitions' copies live: ``<home>/assets/inbox_interactions/<sha256>/``."""
    return pipeline.paths().assets.joinpath(*INBOX_ASSET_KEY.path)


def forget_filter(pipeline: PipelineResource, asset: str) -> ForgetFilter | None:
    """The project's forget list as a filter (``None``: nobody forgotten); a list this process cannot
    apply fails the step (training without it would bring forgotten users back)."""
    try:
        return _forget_filter(pipeline.paths().home)
    except ForgetListError as exc:
        raise dg.Failure(f"{asset}: {exc}") from exc


class InboxFileConfig(dg.Config):
    file: str = Field(
        default="",
        description="The inbox file with this partition's content (the sensor sets "
        "it). Empty: look for a file with this SHA-256 in the inbox, else use the stored copy.",
    )


@dg.asset(key=INBOX_ASSET_KEY, group_name=GROUP, partitions_def=inbox_partitions, kinds={"pandas"}, code_version="1")
def inbox_interactions(
    context: dg.AssetExecutionContext, config: InboxFileConfig, pipeline: PipelineResource
) -> dg.MaterializeResult:
    """One inbox file (partition key: its SHA-256), checked like the folder format's interactions
    table and stored write-once: the original bytes and the parsed table under
    ``<home>/assets/inbox_interactions/<sha256>/``. The inbox file itself is only read.

    A bad file fails this partition with the file, row and column in the error; nothing of it is
    stored and ``raw_interactions`` does not include it. Rows of users on the forget list are not
    stored (counted in ``forgotten_rows_removed``).
    """
    try:
        digest = check_digest(context.partition_key)
    except ValueError as exc:
        raise dg.Failure(f"inbox_interactions: {exc}") from exc
    folder = inbox_dir(pipeline.paths().home)
    path = Path(config.file).expanduser() if config.file else find_inbox_file(folder, digest)
    if path is not None and not path.is_file():
        path = None  # gone since the sensor saw it: the stored copy, if any, still serves
    forgetting = forget_filter(pipeline, "inbox_interactions")
    try:
        stored = ingest_file(
            path, digest, inbox_store(pipeline), forgotten=forgetting.forgotten if forgetting else None
        )
    except (DataError, OSError) as exc:
        raise dg.Failure(
            description=f"inbox_interactions[{digest[:12]}]: {exc}",
            metadata={"file": str(path) if path else "none", "sha256": digest},
        ) from exc
    table = stored.table
    context.log.info(
        f"inbox partition {digest[:12]}: {len(table)} interactions from "
        f"{path.name if path else stored.original.name}"
        f"{'' if stored.newly_stored else ' (already stored: copy kept as it was)'}"
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(digest),  # the file's content hash: the partition's data version
        metadata={
            "sha256": digest,
            "file": str(path) if path else "none (stored copy)",
            "stored_copy": dg.MetadataValue.path(str(stored.original)),
            "newly_stored": stored.newly_stored,
            "interactions": len(table),
            "forgotten_rows_removed": stored.forgotten_rows,
            "users": int(table["user_id"].nunique()),
            "items": int(table["item_id"].nunique()),
            "first": _when(table["timestamp"].min()) if len(table) else "none",
            "last": _when(table["timestamp"].max()) if len(table) else "none",
        },
    )


def _when(seconds) -> str:
    try:
        return str(pd.to_datetime(int(seconds), unit="s"))
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        return f"{int(seconds)} s (out of range)"


def with_inbox_interactions(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, interactions: pd.DataFrame, source_dataset: dict
) -> tuple[pd.DataFrame, dict]:
    """``interactions`` with every materialized ``inbox_interactions`` partition appended (in the
    order the partitions were added), and metadata for ``raw_interactions``.

    Partitions that are registered but not materialized (their run failed, e.g. a bad file, or is
    still going) are not included and are listed in the metadata and the log. No partition: the
    frame comes back unchanged."""
    instance = context.instance
    registered = list(instance.get_dynamic_partitions(INBOX_PARTITIONS_NAME))
    if not registered:
        return interactions, {"inbox_partitions": 0}
    materialized = instance.get_materialized_partitions(INBOX_ASSET_KEY)
    included = [d for d in registered if d in materialized]
    pending = [d for d in registered if d not in materialized]
    split_column = (source_dataset.get("info") or {}).get("split_column")
    store = inbox_store(pipeline)
    try:
        combined, stats = append_inbox(
            interactions, [(d, load_partition(store, d)) for d in included], split_column=split_column
        )
    except DataError as exc:
        raise dg.Failure(f"raw_interactions: {exc}") from exc
    if pending:
        context.log.warning(
            f"{len(pending)} inbox partition(s) are registered but not materialized (failed or "
            f"still running) and are not included: {', '.join(d[:12] for d in pending)}"
        )
    table = pd.DataFrame(
        {
            "sha256": included,
            "rows": [stats.rows[d] for d in included],
            "already_present": [stats.already_present[d] for d in included],
        }
    )
    return combined, {
        "inbox_partitions": len(included),
        "inbox_rows_appended": stats.appended,
        "inbox_rows_already_present": int(sum(stats.already_present.values())),
        "inbox_digests": dg.MetadataValue.json(included),
        "inbox_partitions_not_included": dg.MetadataValue.json(pending),
        "inbox_table": frame_table(table, 50),
        "origin_column": ORIGIN_COLUMN,
    }
