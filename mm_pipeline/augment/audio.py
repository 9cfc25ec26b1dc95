"""Vectorised waveform augmentation: time shift, gain, additive noise and a time mask."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def augment_audio(
    waves: np.ndarray,
    n_views: int = 1,
    seed: int = 0,
    sample_rate: int = 8000,
    max_shift: float = 0.1,
    gain_db: float = 6.0,
    snr_db: float = 20.0,
    time_mask: float = 0.1,
    block: int = 1024,
) -> np.ndarray:
    r"""``n_views`` augmented views of each clip: float ``[N, T]`` -> float32 ``[N, n_views, T]``.

    For clip :math:`x` (length :math:`T`) each view draws its own parameters and applies, in order:

    1. circular shift by :math:`s \sim U\{-S, \dots, S\}` samples, :math:`S = \lfloor \text{max\_shift}
       \cdot \text{sample\_rate} \rfloor` (``max_shift`` in seconds): :math:`y_t = x_{(t - s) \bmod T}`;
    2. gain :math:`g \sim U[-G, G]` dB: :math:`y \leftarrow 10^{g/20} y`;
    3. white noise at ``snr_db`` relative to the clip's own power
       :math:`P = \frac{1}{T}\sum_t y_t^2`: :math:`y \leftarrow y + \sigma \epsilon`,
       :math:`\epsilon \sim \mathcal{N}(0, 1)`, :math:`\sigma = \sqrt{P \cdot 10^{-\text{snr}/10}}`
       (a silent clip gets :math:`\sigma = 0`, so no NaN; ``snr_db=inf`` disables noise);
    4. one time mask: :math:`L \sim U\{0, \dots, \min(\lfloor \text{time\_mask} \cdot
       \text{sample\_rate} \rfloor, \lfloor T/2 \rfloor)\}` samples starting at a uniform position are
       zeroed (``time_mask`` in seconds; never more than half the clip).

    All parameters are drawn up front from one ``numpy.random.default_rng(seed)``, so the output is a
    function of (waves, arguments) only; ``block`` (clips computed at a time, bounding the temporary
    memory) does not change it.
    """
    waves = np.asarray(waves)
    if waves.ndim != 2:
        raise ValueError(f"waves must have shape [N, T], got {waves.shape}")
    if not np.issubdtype(waves.dtype, np.floating):
        raise ValueError(f"waves must be a floating array, got dtype {waves.dtype}")
    n_views, block = int(n_views), int(block)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    for name, value in (("max_shift", max_shift), ("gain_db", gain_db), ("time_mask", time_mask)):
        if not (math.isfinite(float(value)) and float(value) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if math.isnan(float(snr_db)):
        raise ValueError("snr_db must be a number, got nan")
    n, t = waves.shape
    if n == 0 or t == 0:
        return np.zeros((n, n_views, t), dtype=np.float32)
    x = waves.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("waves contains NaN or infinite values")

    rng = np.random.default_rng(int(seed))
    shape = (n, n_views)
    max_s = min(int(max_shift * sample_rate), t - 1)
    shift = rng.integers(-max_s, max_s + 1, size=shape)
    gain = 10.0 ** (rng.uniform(-gain_db, gain_db, size=shape) / 20.0)
    max_len = min(int(time_mask * sample_rate), t // 2)
    mask_len = rng.integers(0, max_len + 1, size=shape)
    mask_start = rng.integers(0, t - mask_len + 1)  # per-view upper bound keeps the mask inside the clip
    snr_scale = 10.0 ** (-float(snr_db) / 10.0)
    out = np.empty((n, n_views, t), dtype=np.float32)
    pos = np.arange(t)
    # A block of clips at a time: the shifted views, their noise, the float64 power and the mask are
    # each as large as the output, and at once they were several times it (4 GB more on builtin:large).
    # The noise is drawn block after block from the same generator: the same numbers as one draw.
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        noise = rng.standard_normal((hi - lo, n_views, t), dtype=np.float32)
        # Circular shift without an [N, V, T] index array: window k of [x, x] is x rolled left by k.
        windows = sliding_window_view(np.concatenate([x[lo:hi], x[lo:hi]], axis=1), t, axis=1)  # a view
        y = out[lo:hi]
        y[...] = windows[np.arange(hi - lo)[:, None], (-shift[lo:hi]) % t]  # [B, V, T]
        y *= gain[lo:hi, :, None].astype(np.float32)

        power = np.mean(np.square(y, dtype=np.float64), axis=-1, keepdims=True)
        sigma = np.sqrt(power * snr_scale).astype(np.float32)
        y += sigma * noise

        start, length = mask_start[lo:hi, :, None], mask_len[lo:hi, :, None]
        y[(pos >= start) & (pos < start + length)] = 0.0
    return out
