r"""A serving module for dot-product recommenders, and its pruned / int8 variants.

:class:`ServingScorer` computes :math:`S = P_B Q^\top` for a batch :math:`B` of users as an embedding
lookup followed by ``nn.Linear(d, n_items, bias=False)`` whose weight is :math:`Q`: that makes the
item-scoring matmul a standard layer that PyTorch's pruning and dynamic quantization understand.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.nn.utils import prune

from mm_pipeline.recommend.base import EmbeddingRecommender, select_rows


class SparseUserTable(nn.Module):
    """A frozen sparse (CSR) user table: ``forward(users)`` gives the batch's rows, dense.

    Item-item models score from the user's history (as wide as the catalogue, a few nonzeros per
    user): the history is data, not weights, so it is neither pruned nor quantized.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        # Kept as its three dense CSR arrays: state dicts and deep copies do not handle CSR tensors.
        self.register_buffer("crow_indices", table.crow_indices().clone())
        self.register_buffer("col_indices", table.col_indices().clone())
        self.register_buffer("values", table.values().detach().to(torch.float32).clone())
        self.shape = tuple(table.shape)

    @property
    def weight(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values, size=self.shape)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return select_rows(self.weight, users).to_dense()


class ServingScorer(nn.Module):
    r"""Scores a batch of users against every item: ``forward(users) -> [B, n_items]``.

    ``user_embeddings`` is a frozen ``nn.Embedding`` holding :math:`P` (a :class:`SparseUserTable`
    for a sparse user table); ``item_scorer`` is an ``nn.Linear(d, n_items, bias=False)`` whose weight
    is :math:`Q`, so ``item_scorer(user_embeddings(users))`` is :math:`P_B Q^\top`. Nothing is
    trainable. With a sparse user table and a float ``item_scorer`` the product is a sparse one.
    """

    def __init__(self, user_embeddings: torch.Tensor, item_embeddings: torch.Tensor) -> None:
        super().__init__()
        if user_embeddings.ndim != 2 or item_embeddings.ndim != 2:
            raise ValueError(
                f"user_embeddings and item_embeddings must be 2-D, got shapes "
                f"{tuple(user_embeddings.shape)} and {tuple(item_embeddings.shape)}"
            )
        if user_embeddings.shape[1] != item_embeddings.shape[1]:
            raise ValueError(
                f"embedding widths differ: user_embeddings has d={user_embeddings.shape[1]}, "
                f"item_embeddings has d={item_embeddings.shape[1]}"
            )
        items = item_embeddings.detach().to(torch.float32).clone()
        if user_embeddings.layout == torch.sparse_csr:
            self.user_embeddings: nn.Module = SparseUserTable(user_embeddings)
        else:
            users = user_embeddings.detach().to(torch.float32).clone()
            self.user_embeddings = nn.Embedding.from_pretrained(users, freeze=True)
        self.item_scorer = nn.Linear(items.shape[1], items.shape[0], bias=False)
        self.item_scorer.weight = nn.Parameter(items, requires_grad=False)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return score_batch(self, users)

    @classmethod
    def from_recommender(cls, model: EmbeddingRecommender) -> ServingScorer:
        """A scorer with copies of ``model``'s embeddings (scores equal ``model.score``)."""
        if not isinstance(model, EmbeddingRecommender):
            raise TypeError(f"model must be an EmbeddingRecommender, got {type(model).__name__}")
        return cls(model.user_embeddings, model.item_embeddings)


def score_batch(scorer: nn.Module, users: torch.Tensor) -> torch.Tensor:
    """``[len(users), n_items]`` scores of a scorer or of its quantized copy (whose ``forward`` this is too)."""
    table, layer = scorer.user_embeddings, scorer.item_scorer
    if isinstance(table, SparseUserTable) and isinstance(layer, nn.Linear):
        return torch.sparse.mm(select_rows(table.weight, users), layer.weight.T)
    return layer(table(users))


def _check_scorer(scorer: nn.Module) -> None:
    if not (hasattr(scorer, "user_embeddings") and hasattr(scorer, "item_scorer")):
        raise TypeError(f"scorer must be a ServingScorer (or a quantized copy of one), got {type(scorer).__name__}")


def prune_scorer(scorer: ServingScorer, amount: float) -> ServingScorer:
    r"""A deep copy of ``scorer`` with the smallest-magnitude ``amount`` of all weights set to zero.

    Only global unstructured *magnitude* (L1) pruning is done: the user and item tables are pooled
    (:math:`N` weights in all; a sparse user table, a user's history, is left as it is), the
    ``round(amount * N)`` with the smallest :math:`|w|` are zeroed
    (PyTorch's count; Python rounding), and the mask is made permanent with ``prune.remove``. There is
    no fine-tuning afterwards and the tensors stay dense, so the win is sparsity (for sparse storage
    or kernels downstream), not a smaller state dict by itself. ``scorer`` is left untouched.
    """
    if not isinstance(scorer, ServingScorer):
        raise TypeError(f"scorer must be a ServingScorer, got {type(scorer).__name__}")
    if isinstance(amount, bool) or not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1], got {amount!r}")
    pruned = copy.deepcopy(scorer)
    targets = [(pruned.item_scorer, "weight")]
    if not isinstance(pruned.user_embeddings, SparseUserTable):  # a user's history is data, not a weight
        targets.append((pruned.user_embeddings, "weight"))
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(amount))
    for module, name in targets:
        prune.remove(module, name)  # bake the mask into the weight; drop weight_orig / weight_mask
    return pruned


def quantize_scorer(scorer: ServingScorer) -> nn.Module:
    r"""A deep copy of ``scorer`` whose ``item_scorer`` is a dynamically quantized int8 ``Linear``.

    ``torch.ao.quantization.quantize_dynamic`` stores the item matrix as per-tensor symmetric qint8
    and quantizes each batch of user vectors on the fly, so the item-scoring matmul (the
    :math:`O(B \cdot d \cdot n_\text{items})` hot path) runs in int8. The user table stays float:
    a lookup is a gather with no arithmetic to accelerate, and ``quantize_dynamic`` does not
    handle ``nn.Embedding`` with its default config, so quantizing it would only add error.
    """
    if not isinstance(scorer, ServingScorer):
        raise TypeError(f"scorer must be a ServingScorer, got {type(scorer).__name__}")
    with warnings.catch_warnings():
        # torch 2.x flags torch.ao.quantization (and quantized-tensor creation) as deprecated in
        # favour of torchao, which is not a dependency; silence exactly those two messages here.
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(scorer), {nn.Linear}, dtype=torch.qint8)


def item_weight(scorer: nn.Module) -> torch.Tensor:
    """The item matrix ``[n_items, d]`` in float32: dequantized when ``item_scorer`` is int8."""
    _check_scorer(scorer)
    layer = scorer.item_scorer
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().to(torch.float32).clone()
    weight = layer.weight() if callable(getattr(layer, "weight", None)) else None
    if weight is None or not weight.is_quantized:
        raise TypeError(f"scorer.item_scorer is neither nn.Linear nor a quantized Linear ({type(layer).__name__})")
    return weight.dequantize().to(torch.float32)


def scorer_to_recommender(scorer: nn.Module, name: str, info: dict | None = None) -> EmbeddingRecommender:
    r"""Rebuild an :class:`EmbeddingRecommender` from a (pruned and/or int8) scorer.

    The user table is copied as is; the item table is ``item_scorer``'s weight, *dequantized* for
    an int8 scorer, so evaluating the result measures the quality lost to weight quantization (and
    pruning). It does not reproduce the per-batch int8 quantization of the user vectors that the
    quantized ``forward`` also applies; that extra error is small but makes ``scorer(users)`` and
    the recommender's ``score`` differ slightly. For an fp32 scorer the round trip is exact.
    """
    _check_scorer(scorer)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    users = scorer.user_embeddings.weight.detach().to(torch.float32).clone()  # CSR stays CSR
    return EmbeddingRecommender(
        name=name, user_embeddings=users, item_embeddings=item_weight(scorer), info=dict(info or {})
    )
