"""Log-mel spectrograms and pooled audio features, computed in batches with ``torch.stft``."""

from __future__ import annotations

import numpy as np
import torch

# Clips per STFT call: bounds the complex spectrogram's memory (~N x frames x bins x 8 bytes).
_CHUNK = 256


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    r"""HTK mel scale: :math:`m = 2595 \log_{10}(1 + f / 700)`."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    r"""Inverse of :func:`hz_to_mel`: :math:`f = 700 (10^{m / 2595} - 1)`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    r"""Triangular mel filters, float32 ``[n_mels, n_fft // 2 + 1]``.

    Take :math:`n_\text{mels} + 2` points equally spaced on the HTK mel scale between ``fmin`` and
    ``fmax`` (default Nyquist) and map them back to Hz: :math:`f_0 < f_1 < \dots < f_{n+1}`. Filter
    :math:`m` (centre :math:`f_{m+1}`) evaluated at FFT bin frequency :math:`f = k \cdot sr / n_\text{fft}` is

    .. math::
        H_m(f) = \max\Bigl(0, \min\Bigl(\frac{f - f_m}{f_{m+1} - f_m},
                                        \frac{f_{m+2} - f}{f_{m+2} - f_{m+1}}\Bigr)\Bigr),

    a triangle of height 1 at its centre (no area normalisation). Very narrow filters may fall
    between bins and be all zero when ``n_fft`` is small for ``n_mels``.
    """
    n_mels, n_fft, sample_rate = int(n_mels), int(n_fft), int(sample_rate)
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    if n_fft < 2:
        raise ValueError(f"n_fft must be >= 2, got {n_fft}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    nyquist = sample_rate / 2.0
    fmax = nyquist if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= nyquist:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2 = {nyquist}, got fmin={fmin}, fmax={fmax}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # [n_mels + 2]
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft  # [bins]
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - left) / (centre - left)
    falling = (right - freqs[None, :]) / (right - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def _check_waves(waves: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(waves, torch.Tensor):
        x = waves.detach().to("cpu")
    else:
        arr = np.asarray(waves)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"waves must be a real numeric array, got dtype {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"waves must have shape [N, T], got {tuple(x.shape)}")
    if x.shape[0] > 0 and x.shape[1] == 0:
        raise ValueError(f"waves must have at least one sample per clip, got {tuple(x.shape)}")
    return x.to(torch.float32)


def _n_frames(n_samples: int, n_fft: int, hop_length: int) -> int:
    # centre=True pads n_fft // 2 on both sides; clips are first padded to at least n_fft samples.
    return max(n_samples, n_fft) // hop_length + 1


def log_mel_spectrogram(
    waves: np.ndarray | torch.Tensor, sample_rate: int, n_mels: int = 40, n_fft: int = 256, hop_length: int = 64
) -> torch.Tensor:
    r"""Log-mel power spectrogram, float32 ``[N, n_mels, frames]``.

    :math:`S = \log(M\,|\mathrm{STFT}(x)|^2 + 10^{-6})` with a Hann window of ``n_fft`` samples,
    hop ``hop_length``, centred frames (reflect padding) and :math:`M` from :func:`mel_filterbank`.
    Clips shorter than ``n_fft`` are zero-padded at the end to ``n_fft`` samples first, so
    ``frames = max(T, n_fft) // hop_length + 1``. The whole batch goes through one ``torch.stft`` per
    chunk of clips.
    """
    x = _check_waves(waves)
    n_fft, hop_length = int(n_fft), int(hop_length)
    if hop_length < 1:
        raise ValueError(f"hop_length must be >= 1, got {hop_length}")
    fb = torch.from_numpy(mel_filterbank(n_mels, n_fft, sample_rate))  # validates n_mels, n_fft, sample_rate
    n, t = x.shape
    frames = _n_frames(t, n_fft, hop_length)
    if n == 0:
        return torch.zeros((0, int(n_mels), frames), dtype=torch.float32)
    if t < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - t))
    window = torch.hann_window(n_fft, dtype=torch.float32)
    out = torch.empty((n, int(n_mels), frames), dtype=torch.float32)
    for start in range(0, n, _CHUNK):
        spec = torch.stft(
            x[start : start + _CHUNK],
            n_fft=n_fft,
            hop_length=hop_length,
            window=window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # [B, bins, frames]
        power = spec.real.square() + spec.imag.square()
        out[start : start + _CHUNK] = torch.log(torch.matmul(fb, power) + 1e-6)
    return out


def audio_features(
    waves: np.ndarray | torch.Tensor, sample_rate: int, n_mels: int = 40, n_fft: int = 256, hop_length: int = 64
) -> np.ndarray:
    r"""Fixed-size clip descriptor, float32 ``[N, 3 * n_mels]``, from the log-mel spectrogram :math:`S`.

    Per mel band :math:`b`, over frames :math:`t = 1..F`:

    .. math::
        \mu_b = \tfrac{1}{F}\sum_t S_{bt}, \quad
        \sigma_b = \sqrt{\tfrac{1}{F}\sum_t (S_{bt} - \mu_b)^2}, \quad
        \delta_b = \tfrac{1}{F-1}\sum_{t=2}^{F} |S_{bt} - S_{b,t-1}|

    laid out as ``[mu (n_mels), sigma (n_mels), delta (n_mels)]``. :math:`\mu` is the spectral
    envelope, :math:`\sigma` its variability and :math:`\delta` the frame-to-frame change (onsets,
    rhythm, amplitude modulation); :math:`\delta = 0` for a single frame.
    """
    s = log_mel_spectrogram(waves, sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length)
    mean = s.mean(dim=-1)
    # Population std written out: torch.std warns on an empty batch.
    std = (s - mean.unsqueeze(-1)).square().mean(dim=-1).sqrt()
    if s.shape[-1] > 1:
        delta = (s[..., 1:] - s[..., :-1]).abs().mean(dim=-1)
    else:
        delta = torch.zeros_like(mean)
    return torch.cat([mean, std, delta], dim=-1).numpy().astype(np.float32, copy=False)
