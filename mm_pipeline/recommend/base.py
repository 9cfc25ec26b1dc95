"""What every trained recommender reduces to for evaluation, compression and serving."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class EmbeddingRecommender:
    r"""A recommender whose score is a dot product: :math:`s(u, i) = \langle p_u, q_i \rangle`.

    Every model in the project (most-popular included, with :math:`p_u = 1` and :math:`q_i` the item's
    training popularity) exports this form, so one evaluation, one compression step and one serving
    wrapper cover them all.
    """

    name: str
    user_embeddings: torch.Tensor  # [n_users, d] float32
    item_embeddings: torch.Tensor  # [n_items, d] float32
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.user_embeddings.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_embeddings.shape[0])

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` (a 1-D index tensor) against every item: ``[len(users), n_items]``."""
        return self.user_embeddings[users] @ self.item_embeddings.T

    def to_bundle(self) -> dict[str, Any]:
        return {"name": self.name, "user_embeddings": self.user_embeddings.float(),
                "item_embeddings": self.item_embeddings.float(), "info": self.info}

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any]) -> "EmbeddingRecommender":
        return cls(name=bundle["name"],
                   user_embeddings=torch.from_numpy(np.asarray(bundle["user_embeddings"], dtype=np.float32)),
                   item_embeddings=torch.from_numpy(np.asarray(bundle["item_embeddings"], dtype=np.float32)),
                   info=bundle.get("info", {}))
