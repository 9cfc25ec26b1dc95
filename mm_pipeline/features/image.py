"""A small CNN image encoder trained self-supervised (SimCLR) on augmented views."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mm_pipeline.align.losses import info_nce


@dataclass
class ImageEncoderConfig:
    """Architecture and training settings of :class:`ImageEncoder`.

    ``checkpoint``: a state-dict file (as written by :func:`save_image_encoder`, or a bare state dict)
    to load instead of training.
    """

    embedding_dim: int = 64
    channels: tuple[int, ...] = (32, 64, 128)
    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    temperature: float = 0.2
    seed: int = 0
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {self.channels}")
        if int(self.embedding_dim) < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if int(self.epochs) < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if int(self.batch_size) < 2:
            raise ValueError(f"batch_size must be >= 2 (contrastive pairs need negatives), got {self.batch_size}")
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not float(self.temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the parameter shapes (stored next to the weights)."""
        return {"embedding_dim": int(self.embedding_dim), "channels": list(self.channels)}


class ImageEncoder(nn.Module):
    r"""Conv-BN-ReLU blocks, global average pooling and a linear map to ``embedding_dim``.

    Block :math:`k` is a 3x3 convolution with stride 2 (halving height and width) to ``channels[k]``,
    batch norm and ReLU; adaptive average pooling makes any input size work. ``forward`` maps float
    images ``[B, 3, H, W]`` in :math:`[0, 1]` to representations :math:`h`; inputs are first
    standardised per channel, :math:`(x_c - \mu_c) / \sigma_c`, with the buffers ``pixel_mean`` and
    ``pixel_std`` (set from the training data). ``project`` is the SimCLR head
    :math:`z = W_2\,\mathrm{ReLU}(W_1 h)`, used only by the training loss.
    """

    def __init__(self, embedding_dim: int = 64, channels: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.channels = tuple(int(c) for c in channels)
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in self.channels:
            # bias=False: batch norm's shift makes a conv bias redundant.
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(c_in, self.embedding_dim)
        self.head = nn.Sequential(
            nn.Linear(self.embedding_dim, self.embedding_dim),
            nn.ReLU(inplace=True),
            nn.Linear(self.embedding_dim, self.embedding_dim),
        )
        self.register_buffer("pixel_mean", torch.full((3,), 0.5))
        self.register_buffer("pixel_std", torch.full((3,), 0.25))

    @classmethod
    def from_config(cls, config: ImageEncoderConfig) -> ImageEncoder:
        return cls(embedding_dim=config.embedding_dim, channels=config.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.pixel_mean.view(1, 3, 1, 1)) / self.pixel_std.view(1, 3, 1, 1)
        return self.embed(self.features(x))

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)


def _to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` -> float ``[..., 3, H, W]`` in [0, 1]."""
    return images_u8.movedim(-1, -3).float().div_(255.0)


def _check_images(images: np.ndarray, name: str, ndim: int) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got dtype {images.dtype}")
    layout = "[N, H, W, 3]" if ndim == 4 else "[N, V, H, W, 3]"
    if images.ndim != ndim or images.shape[-1] != 3 or 0 in images.shape[-3:-1]:
        raise ValueError(f"{name} must have shape {layout}, got {images.shape}")
    return images


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-channel mean and std of uint8 pixels scaled to [0, 1], float32 ``[3]`` each.

    Computed from 256-bin histograms: exact, and no float copy of the whole array. The std is
    floored at 1e-3 so flat-colour data does not divide by ~0.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = np.empty(3, np.float32), np.empty(3, np.float32)
    for c in range(3):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        p = hist / hist.sum()
        m = float(p @ values)
        mean[c] = m
        std[c] = max(np.sqrt(max(float(p @ values**2) - m * m, 0.0)), 1e-3)
    return mean, std


def _load_state(path: str | Path, config: ImageEncoderConfig) -> ImageEncoder:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image encoder checkpoint {str(path)!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or corrupt file
        raise ValueError(f"cannot read image encoder checkpoint {str(path)!r}: {exc}") from exc
    # Accept both the save_image_encoder layout and a bare state dict.
    if isinstance(blob, dict) and "state_dict" in blob:
        state, saved_arch = blob["state_dict"], blob.get("config")
    else:
        state, saved_arch = blob, None
    if not isinstance(state, dict):
        raise ValueError(f"image encoder checkpoint {str(path)!r} does not hold a state dict")
    if isinstance(saved_arch, dict):
        saved = {"embedding_dim": saved_arch.get("embedding_dim"), "channels": list(saved_arch.get("channels", []))}
        if saved != config.architecture():
            raise ValueError(
                f"image encoder checkpoint {str(path)!r} was saved with {saved}, "
                f"which does not match the config {config.architecture()}"
            )
    encoder = ImageEncoder.from_config(config)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatch
        raise ValueError(
            f"image encoder checkpoint {str(path)!r} does not match the architecture {config.architecture()}: {exc}"
        ) from exc
    encoder.eval()
    return encoder


def train_image_encoder(
    views: np.ndarray, config: ImageEncoderConfig | None = None
) -> tuple[ImageEncoder, pd.DataFrame]:
    r"""Self-supervised SimCLR training on augmented views, uint8 ``[N, V, H, W, 3]`` with ``V >= 2``.

    Per batch of items :math:`B`, two distinct views :math:`a \ne b` of each item are drawn (views 0
    and 1 when :math:`V = 2`), encoded and projected, and the symmetric NT-Xent loss
    :func:`~mm_pipeline.align.losses.info_nce` with temperature ``config.temperature`` pairs
    :math:`z_a^{(i)}` with :math:`z_b^{(i)}` against the other :math:`2|B| - 2` views; Adam steps on
    its gradient. The per-channel pixel mean and std of the views become the encoder's input
    standardisation. Item order, view choice and initialisation come from ``config.seed`` (via a
    forked global RNG and a local ``torch.Generator``), so a run is reproducible and leaves the
    caller's RNG state untouched.

    With ``config.checkpoint`` set the weights are loaded from that file and training is skipped.
    Returns the encoder (eval mode) and the history ``DataFrame`` with columns ``epoch`` and ``loss``
    (the mean batch loss of each epoch; empty when nothing was trained).
    """
    config = config or ImageEncoderConfig()
    history = pd.DataFrame({"epoch": pd.Series(dtype="int64"), "loss": pd.Series(dtype="float64")})
    if config.checkpoint is not None:
        return _load_state(config.checkpoint, config), history
    views = _check_images(views, "views", 5)
    n, v = views.shape[:2]
    if v < 2:
        raise ValueError(f"views needs at least 2 views per item, got shape {views.shape}")
    if n < 2:
        raise ValueError(f"views needs at least 2 items for contrastive training, got shape {views.shape}")

    data = torch.from_numpy(np.ascontiguousarray(views))  # stays uint8; batches are converted on the fly
    batch_size = min(int(config.batch_size), n)
    rows = []
    # fork_rng: the seed fixes weight init without changing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        encoder = ImageEncoder.from_config(config)
        mean, std = _channel_stats(views)
        encoder.pixel_mean.copy_(torch.from_numpy(mean))
        encoder.pixel_std.copy_(torch.from_numpy(std))
        optimizer = torch.optim.Adam(encoder.parameters(), lr=float(config.lr))
        gen = torch.Generator().manual_seed(int(config.seed))
        encoder.train()
        for epoch in range(int(config.epochs)):
            order = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                if idx.numel() < 2:
                    continue  # a single leftover item has no negatives (and breaks batch norm)
                if v == 2:
                    a, b = torch.zeros_like(idx), torch.ones_like(idx)
                else:
                    # b = a + offset (mod V), offset in 1..V-1: two different views of each item.
                    a = torch.randint(0, v, idx.shape, generator=gen)
                    b = (a + torch.randint(1, v, idx.shape, generator=gen)) % v
                x = _to_float(torch.cat([data[idx, a], data[idx, b]]))  # one pass keeps BN stats joint
                z = encoder.project(encoder(x))
                loss = info_nce(z[: idx.numel()], z[idx.numel() :], temperature=float(config.temperature))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * idx.numel()
                seen += idx.numel()
            rows.append({"epoch": epoch, "loss": total / max(seen, 1)})
    encoder.eval()
    if rows:
        history = pd.DataFrame(rows, columns=["epoch", "loss"]).astype({"epoch": "int64", "loss": "float64"})
    return encoder, history


def embed_images(encoder: ImageEncoder, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Representations :math:`h` of uint8 ``[N, H, W, 3]`` images: float32 ``[N, embedding_dim]``.

    Runs in eval mode (batch norm uses its running statistics) without gradients, in batches of
    ``batch_size``; the encoder's previous train/eval mode is restored afterwards.
    """
    images = _check_images(images, "images", 4)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = images.shape[0]
    out = np.empty((n, encoder.embedding_dim), dtype=np.float32)
    data = torch.from_numpy(np.ascontiguousarray(images))
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                out[start : start + batch_size] = encoder(_to_float(data[start : start + batch_size])).numpy()
    finally:
        encoder.train(was_training)
    return out


def save_image_encoder(encoder: ImageEncoder, path: str | Path) -> Path:
    """Write ``{"state_dict": tensors, "config": {"embedding_dim", "channels"}}`` with ``torch.save``.

    Only tensors and plain Python values are stored (no pickled classes), so
    :func:`load_image_encoder` can read it with ``weights_only=True``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: t.detach().cpu().clone() for k, t in encoder.state_dict().items()}
    torch.save(
        {
            "state_dict": state,
            "config": {"embedding_dim": int(encoder.embedding_dim), "channels": list(encoder.channels)},
        },
        path,
    )
    return path


def load_image_encoder(path: str | Path, config: ImageEncoderConfig | None = None) -> ImageEncoder:
    """Rebuild an :class:`ImageEncoder` from ``config`` and load the weights at ``path`` (eval mode).

    Raises ``ValueError`` naming the file when it is unreadable as a weights-only checkpoint or its
    weights / stored architecture do not match ``config``.
    """
    config = config or ImageEncoderConfig()
    return _load_state(path, config)
