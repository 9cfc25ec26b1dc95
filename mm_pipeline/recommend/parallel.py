"""Data-parallel training with ``torch.distributed`` (launched by ``torchrun``).

Data parallelism here is the classic synchronous kind: every process holds the whole model, each global
mini-batch is split across the processes, and the gradients are summed with an all-reduce before every
optimiser step, weighted so that the step equals the single-process step on the whole batch:

.. math::
    g = \\sum_r \\frac{n_r}{N} \\, g_r, \\qquad N = \\sum_r n_r

where :math:`g_r` is the mean-loss gradient over the :math:`n_r` pairs of process :math:`r`. Every process
draws the same permutation and negatives (same seed, same draws), so one process and many see the same
batches. The backend is gloo on CPUs and NCCL on GPUs; ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: np.ndarray, rank: int, size: int) -> np.ndarray:
    """This process's part of a global mini-batch: every ``size``-th element from ``rank`` (sizes differ by
    at most one; a part may be empty when the batch is smaller than the world)."""
    return batch[rank::size]


def synchronise_gradients(parameters, share: float) -> None:
    """Sum ``share * grad`` over the processes into every parameter's gradient (``share`` = this
    process's part of the global batch, ``n_r / N``). A parameter without a gradient here joins with zeros,
    so every process takes part in every all-reduce."""
    for parameter in parameters:
        if not parameter.requires_grad:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        else:
            parameter.grad.mul_(share)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers to every process (same start, whatever each process initialised)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.layout == torch.strided:
            dist.broadcast(tensor.data, src=0)


def from_rank_zero(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's ``values`` on every process (the validation score and the stop decision, which rank 0
    alone computes)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()
