"""Which torch device a stage runs on: the GPU when one is visible, else the CPU (or what config says)."""

from __future__ import annotations

import torch

from mm_pipeline import settings


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"``: this process's GPU when CUDA is available (``LOCAL_RANK``'s under torchrun), else the
    CPU; any other value is a torch device string (``"cpu"``, ``"cuda:1"``)."""
    if spec != "auto":
        device = torch.device(spec)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", (settings.torchrun_local_rank() or 0) % torch.cuda.device_count())
    return torch.device("cpu")
