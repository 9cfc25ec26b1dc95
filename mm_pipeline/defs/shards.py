"""Item shards: the per-item stages split into N steps that N workers run at once.

``MM_PIPELINE_ITEM_SHARDS=N`` (read when the definitions load; default 1: nothing changes) turns each
per-item asset (decoding images and audio, the three augmentations, text and audio features) into a
graph-backed asset of the same key: N shard ops, each running the asset's own function on items
``[i n / N, (i + 1) n / N)``, and one merge op that concatenates their values in item order. Every
shard is its own step, so the multiprocess executor or the Celery workers run them in parallel;
downstream assets read the merged value as before. The run config keeps its shape
(``ops: {text_features: {config: ...}}``: a config mapping hands it to every shard).

What does not shard: the image encoder (``image_features``) is trained on every item's views at once.
Augmentation draws are seeded per shard, so for N > 1 the augmented views (and what is trained on
them) are deterministic for a given N but not those of N = 1; decoding and the text and audio
features of the clean inputs are the same whatever N is. Every machine must use the same N (the
workers rebuild the job from it).
"""

from __future__ import annotations

import inspect

import dagster as dg
import numpy as np
import pandas as pd

from mm_pipeline import settings

SHARDS_ENV = settings.ITEM_SHARDS_ENV
SHARDED_ASSETS = (
    "raw_item_images",
    "raw_item_audio",
    "augmented_images",
    "augmented_text",
    "augmented_audio",
    "text_features",
    "audio_features",
)
# Bundle entries with one row per item (sliced for a shard, concatenated back); DataFrames are item
# tables. Other entries (quarantine tables, the sample rate) are per shard or the same in every shard.
ITEM_KEYS = frozenset({"images", "present", "waves", "views", "features", "augmented"})


def item_shards() -> int:
    """``$MM_PIPELINE_ITEM_SHARDS`` (see :func:`mm_pipeline.settings.item_shards`)."""
    return settings.item_shards()


def _n_items(value) -> int | None:
    if isinstance(value, pd.DataFrame):
        return len(value)
    if isinstance(value, dict) and "present" in value:
        return len(value["present"])
    return None


def item_slice(value, lo: int, hi: int):
    """Items ``[lo, hi)`` of an item table or of the item-aligned entries of a bundle; anything else as is."""
    if isinstance(value, pd.DataFrame):
        return value.iloc[lo:hi].reset_index(drop=True)
    if isinstance(value, dict) and "present" in value:
        return {k: (v[lo:hi] if k in ITEM_KEYS else v) for k, v in value.items()}
    return value


def merge_shards(parts: list):
    """The shards' values back in item order: tables and item-aligned arrays concatenated, other tables
    (quarantine records) concatenated, other entries taken from the first shard."""
    first = parts[0]
    if isinstance(first, pd.DataFrame):
        return pd.concat(parts, ignore_index=True)
    merged = {}
    for key, value in first.items():
        if key in ITEM_KEYS:
            merged[key] = np.concatenate([np.asarray(p[key]) for p in parts])
        elif isinstance(value, pd.DataFrame):
            merged[key] = pd.concat([p[key] for p in parts], ignore_index=True)
        else:
            merged[key] = value
    return merged


def _shard_op(asset: dg.AssetsDefinition, index: int, count: int) -> dg.OpDefinition:
    fn = asset.op.compute_fn.decorated_fn
    params = inspect.signature(fn).parameters
    inputs = list(asset.op.ins)
    config_cls = params["config"].annotation if "config" in params else None
    resources = [p for p in params if p not in inputs and p != "config"]
    name = asset.op.name

    @dg.op(
        name=f"{name}_shard_{index}_of_{count}",
        ins={i: dg.In(dg.Any) for i in inputs},
        out=dg.Out(dg.Any),
        required_resource_keys=set(resources),
        config_schema=asset.op.config_schema if config_cls else None,
        description=f"Items of shard {index + 1} of {count} through {name}.",
    )
    def shard(context, **values):
        n = next(n for n in map(_n_items, values.values()) if n is not None)
        lo, hi = index * n // count, (index + 1) * n // count
        kwargs = {k: item_slice(v, lo, hi) for k, v in values.items()}
        kwargs.update({r: getattr(context.resources, r) for r in resources})
        if config_cls is not None:
            kwargs["config"] = config_cls(**context.op_config)
        result = fn(**kwargs)
        return result.value if isinstance(result, dg.Output) else result

    return shard


def sharded_asset(asset: dg.AssetsDefinition, count: int) -> dg.AssetsDefinition:
    """``asset`` (one output, an item table or bundle) as ``count`` shard steps and a merge step."""
    name, inputs = asset.op.name, list(asset.op.ins)
    shards = [_shard_op(asset, i, count) for i in range(count)]

    @dg.op(name=f"{name}_merge", ins={f"shard_{i}": dg.In(dg.Any) for i in range(count)}, out=dg.Out(dg.Any))
    def merge(**parts):
        value = merge_shards([parts[f"shard_{i}"] for i in range(count)])
        return dg.Output(value, metadata={"item_shards": count, "items": _n_items(value) or 0})

    has_config = "config" in inspect.signature(asset.op.compute_fn.decorated_fn).parameters
    config = (
        dg.ConfigMapping(
            config_schema=asset.op.config_schema, config_fn=lambda c: {s.name: {"config": c} for s in shards}
        )
        if has_config
        else None
    )

    @dg.graph(name=name, ins={i: dg.GraphIn() for i in inputs}, config=config)
    def graph(**values):
        return merge(**{f"shard_{i}": op(**values) for i, op in enumerate(shards)})

    keys_by_input = {i: asset.keys_by_input_name[i] for i in inputs}
    return dg.AssetsDefinition.from_graph(
        graph,
        keys_by_input_name=keys_by_input,
        keys_by_output_name={"result": asset.key},
        group_name=asset.group_names_by_key[asset.key],
        descriptions_by_output_name={"result": asset.op.description or name},
        # The asset's own code version plus the shard count (augmentation draws are seeded per shard).
        code_versions_by_output_name={"result": _sharded_code_version(asset, count)},
    )


def _sharded_code_version(asset: dg.AssetsDefinition, count: int) -> str | None:
    version = (asset.code_versions_by_key or {}).get(asset.key)
    return None if version is None else f"{version}+shards{count}"


def with_item_shards(assets: list, count: int | None = None) -> list:
    """``assets`` with the per-item ones split into ``count`` (default ``$MM_PIPELINE_ITEM_SHARDS``) shards."""
    count = item_shards() if count is None else count
    if count == 1:
        return assets
    return [sharded_asset(a, count) if _is_sharded(a) else a for a in assets]


def _is_sharded(asset) -> bool:
    """One of :data:`SHARDED_ASSETS` (multi-assets, e.g. the raw source's, never are)."""
    return (
        isinstance(asset, dg.AssetsDefinition) and len(asset.keys) == 1 and asset.key.to_user_string() in SHARDED_ASSETS
    )
