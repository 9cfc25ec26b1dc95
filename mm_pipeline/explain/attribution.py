r"""Which modality an embedding model's score comes from: integrated gradients over the item's content.

Models whose score is not a sum of modality parts (``mm_gcn``, VBPR) still take each item's content
as an input of the item side: :math:`s(u, i) = \langle p_u, q_i \rangle` with the content columns
:math:`q_{i, a:b} = \lambda_i f(x_i)` (``mm_gcn``: the content tower :math:`f` over the aligned
content :math:`x_i`, :math:`\lambda_i = 0` for warm items when only cold items are scored by content;
VBPR: the visual projections). The input splits into one block per modality,
:math:`x_i = x^0 + \sum_m \Delta_{i,m}` (baseline :math:`x^0 = 0`: an item with no content at all).

**Integrated gradients** (Sundararajan et al., 2017) of the score along the straight path
:math:`x(\alpha) = x^0 + \alpha (x_i - x^0)`, summed over each block:

.. math::
    \mathrm{IG}_m(u, i) = \int_0^1 \big\langle \nabla_x s(u, i; x(\alpha)),\ \Delta_{i,m} \big\rangle
    \, d\alpha = \Big\langle p_{u, a:b},\ \underbrace{\lambda_i \int_0^1 J_f(x(\alpha))\, \Delta_{i,m}
    \, d\alpha}_{A_{i,m}} \Big\rangle,

because the score is linear in :math:`p_u`. So the attribution of *every* (user, item) pair is one dot
product with a per-item vector :math:`A_{i,m}`, computed once per item with forward-mode Jacobian-vector
products (:func:`integrated_jacobian`; midpoint rule over ``steps`` points) and stored with the model
(:attr:`EmbeddingRecommender.parts` ``["content"]``), so serving needs no PyTorch. **Completeness**:
:math:`\sum_m A_{i,m} = \lambda_i (f(x_i) - f(x^0))` up to the quadrature error, hence
:math:`\sum_m \mathrm{IG}_m(u, i) = s(u, i; x_i) - s(u, i; x^0)`. The rest of the score,
:math:`s - \sum_m \mathrm{IG}_m` (the ID embeddings, and the score of the same item without content),
is the ``collaborative`` part. For a linear :math:`f` (VBPR), :math:`A_{i,m} = \lambda_i W \Delta_{i,m}`
exactly.

The ``removal`` vectors :math:`\lambda_i (f(x_i^{-m}) - f(x_i))` say how the item's vector changes when it
loses modality :math:`m` (:math:`x^{-m}`: the model's input for the same item without that modality), so
the deletion test can re-score exactly (:func:`mm_pipeline.explain.faithfulness.deletion_test`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

STEPS = 32
ROWS = 1 << 15  # (block, step, item) rows per batch of Jacobian-vector products


def integrated_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor],
    deltas: torch.Tensor,
    baseline: torch.Tensor | None = None,
    steps: int = STEPS,
) -> torch.Tensor:
    r""":math:`A_{n,b} = \int_0^1 J_{fn}(x^0_n + \alpha \sum_c \Delta_{n,c})\, \Delta_{n,b}\, d\alpha`.

    ``fn`` maps a batch ``[N, D]`` to ``[N, K]`` row by row; ``deltas`` is ``[N, B, D]`` (``B`` input
    blocks per row, summing to :math:`x_n - x^0_n`); ``baseline`` ``[N, D]`` or ``[D]`` (default zeros).
    Midpoint rule over ``steps`` points of the path. Returns ``[N, B, K]``; by completeness
    :math:`\sum_b A_{n,b} \approx fn(x_n) - fn(x^0_n)`."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    deltas = deltas.float()
    n, blocks, width = deltas.shape
    base = torch.zeros(n, width) if baseline is None else baseline.float().expand(n, width)
    total = deltas.sum(1)
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoint rule
    chunk = max(1, ROWS // (blocks * steps))
    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            m = deltas[rows].shape[0]
            # Every (block, step, item) of the chunk in one batch: one JVP call (its overhead dominates).
            points = base[rows][None] + alphas[:, None, None] * total[rows][None]  # [S, m, D]
            points = points[None].expand(blocks, steps, m, width).reshape(-1, width)
            tangents = deltas[rows].permute(1, 0, 2)[:, None].expand(blocks, steps, m, width).reshape(-1, width)
            _, jvp = torch.func.jvp(fn, (points,), (tangents,))
            out.append(jvp.reshape(blocks, steps, m, -1).mean(1).permute(1, 0, 2))
    return torch.cat(out) if out else torch.zeros(0, blocks, 0)


def content_parts(
    fn: Callable[[torch.Tensor], torch.Tensor],
    columns: tuple[int, int],
    deltas: Mapping[str, torch.Tensor],
    removed: Mapping[str, torch.Tensor],
    scale: torch.Tensor | None = None,
    steps: int = STEPS,
) -> dict:
    """The ``content`` entry of :attr:`EmbeddingRecommender.parts` (see the module doc).

    ``fn(x)`` is the item side's content columns ``columns`` for content ``x`` (``[N, D]``, baseline 0);
    ``deltas[m]`` the modality's block :math:`\\Delta_{\\cdot,m}` (``[N, D]``, summing to ``x``) and
    ``removed[m]`` the input without modality ``m``; ``scale`` (``[N]``) is :math:`\\lambda_i`."""
    names = sorted(deltas)
    stacked = torch.stack([deltas[m].float() for m in names], 1)  # [N, M, D]
    n, width = stacked.shape[0], int(columns[1]) - int(columns[0])
    lam = torch.ones(n) if scale is None else scale.float().reshape(-1)
    rows = torch.nonzero(lam != 0).ravel()  # items whose score has no content part need no gradients
    attribution = torch.zeros(n, len(names), width)
    removal = {m: torch.zeros(n, width) for m in names}
    if rows.numel():
        attribution[rows] = integrated_jacobian(fn, stacked[rows], steps=steps) * lam[rows, None, None]
        with torch.no_grad():
            full = fn(stacked[rows].sum(1))
            for m in names:
                removal[m][rows] = (fn(removed[m].float()[rows]) - full) * lam[rows, None]
    return {
        "columns": (int(columns[0]), int(columns[1])),
        "attribution": {m: attribution[:, k].numpy().astype(np.float32) for k, m in enumerate(names)},
        "removal": {m: removal[m].numpy().astype(np.float32) for m in names},
    }


def modality_attribution(parts: Mapping, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
    r""":math:`\mathrm{IG}_m(u, i) = \langle p_{u, a:b}, A_{i,m} \rangle` for the rows ``(users[j], items[j])``:
    ``users`` are the user vectors ``[B, d]`` (full width), ``items`` item indices ``[B]``."""
    a, b = parts["columns"]
    return {m: (users[:, a:b] * table[items]).sum(1) for m, table in parts["attribution"].items()}
