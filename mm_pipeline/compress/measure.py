"""What compression buys: parameter counts, serialized size and scoring latency."""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from mm_pipeline.compress.serving import (
    ServingScorer,
    prune_scorer,
    quantize_scorer,
    scorer_to_recommender,
)
from mm_pipeline.recommend.base import EmbeddingRecommender

VARIANTS = ("fp32", "pruned", "int8", "pruned_int8")


def _weights(module: nn.Module) -> list[torch.Tensor]:
    """Every weight tensor of ``module``, including the packed int8 weights of quantized layers.

    A dynamically quantized ``Linear`` keeps its weight in ``_packed_params``, not in
    ``parameters()``, so counting parameters alone would make the int8 item table vanish.
    """
    tensors: list[torch.Tensor] = []
    for sub in module.modules():
        tensors.extend(p.detach() for p in sub.parameters(recurse=False))
        if hasattr(sub, "_packed_params") and callable(getattr(sub, "weight", None)):
            tensors.append(sub.weight())
            bias = sub.bias() if callable(getattr(sub, "bias", None)) else None
            if bias is not None:
                tensors.append(bias.detach())
    return tensors


def parameter_count(module: nn.Module) -> dict[str, int]:
    """``{"total": n, "nonzero": m}`` over all weights (quantized ones included, counted as values).

    A quantized weight counts as nonzero when its dequantized value is nonzero, so an fp32 weight
    that int8 rounds to zero shows up as extra sparsity.
    """
    total = nonzero = 0
    for tensor in _weights(module):
        values = tensor.dequantize() if tensor.is_quantized else tensor
        total += values.numel()
        nonzero += int(torch.count_nonzero(values))
    return {"total": total, "nonzero": nonzero}


def serialized_size_bytes(module: nn.Module) -> int:
    """Bytes of ``torch.save(module.state_dict())``: what shipping the weights costs, dense."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def scoring_latency_ms(
    module: nn.Module, users: torch.Tensor, batch_size: int = 256, repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Wall-clock milliseconds to score one batch of users, ``{"median_ms": .., "p90_ms": ..}``.

    ``users`` is cut into batches of ``batch_size``; after ``warmup`` untimed passes over all
    batches, every batch is timed (``time.perf_counter``) in each of ``repeats`` passes and the
    median and 90th percentile are taken over those ``repeats * n_batches`` timings. Runs under
    ``torch.inference_mode`` with the module in eval mode, on the current thread settings.
    """
    users = torch.as_tensor(users)
    if users.ndim != 1 or users.numel() == 0 or users.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"users must be a non-empty 1-D integer tensor, got dtype {users.dtype} and shape {tuple(users.shape)}"
        )
    for name, value, low in (("batch_size", batch_size, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    batches = users.long().split(int(batch_size))
    module.eval()
    timings = []
    with torch.inference_mode():
        for _ in range(int(warmup)):
            for batch in batches:
                module(batch)
        for _ in range(int(repeats)):
            for batch in batches:
                start = time.perf_counter()
                module(batch)
                timings.append((time.perf_counter() - start) * 1e3)
    timings = np.asarray(timings)
    return {"median_ms": float(np.median(timings)), "p90_ms": float(np.percentile(timings, 90))}


def compress_recommender(
    model: EmbeddingRecommender,
    prune_amount: float = 0.3,
    latency_users: int = 1024,
    seed: int = 0,
    batch_size: int = 256,
    repeats: int = 5,
) -> dict:
    """Build the serving variants of ``model`` and measure them.

    Returns ``{"variants": {name: module}, "recommenders": {name: EmbeddingRecommender},
    "stats": DataFrame}`` for ``name`` in ``fp32, pruned, int8, pruned_int8`` (``pruned_int8``
    quantizes the pruned scorer). The recommenders feed the usual evaluation so quality changes
    are measured with the same code; ``stats`` has one row per variant with ``variant,
    params_total, params_nonzero, size_bytes, size_ratio`` (vs fp32), ``latency_median_ms,
    latency_p90_ms``. Latency uses ``latency_users`` users drawn with replacement from a
    generator seeded with ``seed``, so the workload is reproducible (the timings are not).
    """
    if not isinstance(model, EmbeddingRecommender):
        raise TypeError(f"model must be an EmbeddingRecommender, got {type(model).__name__}")
    if model.n_users < 1 or model.n_items < 1:
        raise ValueError(
            f"model {model.name!r} has {model.n_users} users and {model.n_items} items; need at least one of each"
        )
    if isinstance(latency_users, bool) or int(latency_users) != latency_users or latency_users < 1:
        raise ValueError(f"latency_users must be a positive integer, got {latency_users!r}")

    fp32 = ServingScorer.from_recommender(model)
    pruned = prune_scorer(fp32, prune_amount)
    variants: dict[str, nn.Module] = {
        "fp32": fp32,
        "pruned": pruned,
        "int8": quantize_scorer(fp32),
        "pruned_int8": quantize_scorer(pruned),
    }
    generator = torch.Generator().manual_seed(int(seed))
    users = torch.randint(0, model.n_users, (int(latency_users),), generator=generator)

    rows, recommenders = [], {}
    for name, module in variants.items():
        counts = parameter_count(module)
        latency = scoring_latency_ms(module, users, batch_size=batch_size, repeats=repeats)
        rows.append(
            {
                "variant": name,
                "params_total": counts["total"],
                "params_nonzero": counts["nonzero"],
                "size_bytes": serialized_size_bytes(module),
                "latency_median_ms": latency["median_ms"],
                "latency_p90_ms": latency["p90_ms"],
            }
        )
        info = {
            **model.info,
            "source_model": model.name,
            "compression": name,
            "prune_amount": float(prune_amount) if "pruned" in name else 0.0,
        }
        recommenders[name] = scorer_to_recommender(module, f"{model.name}[{name}]", info=info)
    stats = pd.DataFrame(rows)
    stats.insert(4, "size_ratio", stats["size_bytes"] / stats.loc[0, "size_bytes"])
    return {"variants": variants, "recommenders": recommenders, "stats": stats}
