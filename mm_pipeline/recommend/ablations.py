"""Ablations of the primary model: what each part of ``mm_gcn`` contributes.

Each variant is the primary model with one thing taken away, trained with the same config, seed and
split, so the difference to ``mm_gcn`` is that thing's contribution:

* ``mm_gcn-<modality>_only``: the content path sees one modality's aligned embedding (and its
  presence flag) instead of all of them; the item-item graph is built from that modality alone
  (its raw features, or its aligned embedding when the primary model's graph is the aligned one);
* ``mm_gcn-no_alignment``: no alignment anywhere: the content path gets the raw per-modality
  features (standardised, side by side, zeros where missing) instead of the aligned shared-space
  embeddings, the content-collaborative InfoNCE term is off, and the item graph is the raw one;
* ``mm_gcn-no_item_graph``: no item-item k-NN graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mm_pipeline.recommend.fit import (
    MultimodalConfig,
    RawFeatures,
    content_matrix,
    raw_graph_features,
    standardized_features,
)

PRIMARY = "mm_gcn"


@dataclass
class Ablation:
    name: str
    description: str
    content: np.ndarray  # [n_items, D] content input of the model
    graph_features: list[np.ndarray] | None  # one [n_items, d] matrix per k-NN graph of the item graph
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, base: MultimodalConfig) -> MultimodalConfig:
        return replace(base, **self.overrides)


def ablations(aligned: dict[str, Any], raw_features: RawFeatures, graph_source: str = "raw") -> list[Ablation]:
    """The ablation variants for these aligned embeddings.

    ``raw_features`` maps each modality to its un-aligned ``(features [n_items, D_m], present [n_items])``;
    ``graph_source`` is the primary model's (see ``MultimodalConfig``).
    Single-modality variants exist only when the dataset has more than one modality.
    """
    modalities = list(aligned["modalities"])
    z = np.asarray(aligned["modality_embeddings"], dtype=np.float32)
    present = np.asarray(aligned["present"], dtype=np.float32)
    missing = sorted(set(modalities) - set(raw_features))
    if missing:
        raise ValueError(f"raw features missing for modalities {missing}")
    out = []
    if len(modalities) > 1:
        for index, modality in enumerate(modalities):
            graph = standardized_features(*raw_features[modality]) if graph_source == "raw" else z[:, index]
            out.append(
                Ablation(
                    f"{PRIMARY}-{modality}_only",
                    f"content path and item graph on {modality} only",
                    np.concatenate([z[:, index], present[:, index : index + 1]], 1),
                    [graph],
                )
            )
    raw = np.concatenate([standardized_features(*raw_features[m]) for m in modalities], 1)
    out.append(
        Ablation(
            f"{PRIMARY}-no_alignment",
            "raw standardised features instead of aligned embeddings; no content-collaborative InfoNCE",
            np.concatenate([raw, present], 1),
            raw_graph_features({m: raw_features[m] for m in modalities}),
            {"align_weight": 0.0},
        )
    )
    out.append(
        Ablation(f"{PRIMARY}-no_item_graph", "no item-item k-NN graph", content_matrix(aligned), None, {"knn_k": 0})
    )
    return out
