"""Contrastive losses shared by the alignment stage and the self-supervised encoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    temperature: float = 0.1,
    valid: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    r"""InfoNCE between two batches of paired embeddings.

    Row :math:`i` of ``anchor`` and row :math:`i` of ``positive`` are a positive pair; every other row
    of ``positive`` is a negative for anchor :math:`i`. With cosine similarity
    :math:`s_{ij} = \cos(a_i, p_j) / \tau`,

    .. math::
        \mathcal{L} = -\frac{1}{|V|} \sum_{i \in V} \log \frac{e^{s_{ii}}}{\sum_{j \in V} e^{s_{ij}}}

    where :math:`V` is the set of rows with ``valid[i]`` true (both sides present). Rows outside
    :math:`V` are neither anchors nor negatives, so a missing modality never enters the loss.
    With ``symmetric`` the loss is averaged with the same term taken from the positive side.

    Returns a scalar; zero (with a gradient path) when fewer than two rows are valid.
    """
    if anchor.shape != positive.shape:
        raise ValueError(f"anchor {tuple(anchor.shape)} and positive {tuple(positive.shape)} differ")
    if valid is not None:
        anchor, positive = anchor[valid], positive[valid]
    if anchor.shape[0] < 2:
        return anchor.sum() * 0.0 + positive.sum() * 0.0
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    logits = a @ p.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss
