"""Log-mel spectrograms of fixed-length clips, and their inversion back to audio.

Forward: ``torchaudio.transforms.MelSpectrogram`` (power 2, centred frames), natural log. The hop
is ``samples // frames``; centred framing yields frames + 1 frames, and the last one (centred on
the clip's final sample) is dropped so the grid is exactly n_mels × frames.
Inverse: exp, the dropped frame restored as a copy of the last, ``InverseMelScale`` (least
squares back to the linear-frequency power spectrogram), then ``GriffinLim`` with a fixed
(non-random) phase initialization, so decoding is deterministic.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torchaudio.transforms as T
from torch import Tensor

from ..errors import UserError

#: Added to the mel power before the log (guards log 0; far below the dither's noise floor).
LOG_FLOOR = 1e-10


@dataclass(frozen=True)
class MelSettings:
    """Rates in Hz, sizes in samples/bins/frames."""

    sample_rate: int
    samples: int
    n_mels: int = 64
    frames: int = 64
    n_fft: int = 1024
    f_min: float = 0.0
    f_max: Optional[float] = None  # None: the Nyquist frequency

    @property
    def hop(self) -> int:
        return self.samples // self.frames

    @property
    def nyquist(self) -> float:
        return self.sample_rate / 2


class LogMel:
    """[N, samples] waveforms ↔ [N, n_mels, frames] natural-log mel power."""

    def __init__(self, s: MelSettings) -> None:
        if s.frames < 2 or s.n_mels < 2 or s.hop < 1:
            raise UserError(f"data: need at least 2 mels and 2 frames of at least one sample, got n_mels={s.n_mels}, frames={s.frames}")
        if not s.hop <= s.n_fft <= s.samples:
            raise UserError(f"data.n_fft must lie between the hop ({s.hop} samples) and the clip length ({s.samples}), got {s.n_fft}")
        f_max = s.nyquist if s.f_max is None else float(s.f_max)
        if not 0 <= s.f_min < f_max <= s.nyquist:
            raise UserError(f"data.f_min/f_max must satisfy 0 ≤ f_min < f_max ≤ {s.nyquist:g} Hz, got {s.f_min}, {s.f_max}")
        self.s = s
        common = dict(sample_rate=s.sample_rate, f_min=float(s.f_min), f_max=f_max, n_mels=s.n_mels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.mel = T.MelSpectrogram(n_fft=s.n_fft, hop_length=s.hop, power=2.0, center=True, **common)
        if any("all zero values" in str(w.message) for w in caught):  # filters narrower than an FFT bin
            raise UserError(f"data.n_mels={s.n_mels} is too many for data.n_fft={s.n_fft}: some mel filters are empty; use fewer mels or a larger n_fft")
        self.inverse_mel = T.InverseMelScale(n_stft=s.n_fft // 2 + 1, **common)

    def __call__(self, waves: Tensor) -> Tensor:
        power = self.mel(waves.float())[..., : self.s.frames]
        return (power + LOG_FLOOR).log()

    @torch.no_grad()
    def invert(self, log_mel: Tensor, n_iter: int = 32, chunk: int = 16) -> Tensor:
        """[N, n_mels, frames] → [N, samples] waveforms (Griffin-Lim with ``n_iter`` iterations)."""
        gl = T.GriffinLim(n_fft=self.s.n_fft, hop_length=self.s.hop, power=2.0, n_iter=n_iter,
                          rand_init=False, length=self.s.samples)  # fmt: skip
        out = []
        for i in range(0, log_mel.shape[0], chunk):
            power = (log_mel[i : i + chunk].float().exp() - LOG_FLOOR).clamp_min(0)
            power = torch.cat([power, power[..., -1:]], dim=-1)  # restore the dropped last frame
            out.append(gl(self.inverse_mel(power)))
        return torch.cat(out)


def spectral_convergence(reference: Tensor, estimate: Tensor) -> float:
    """‖|S| − |Ŝ|‖_F / ‖|S|‖_F between two power spectrograms (compared as magnitudes)."""
    a, b = reference.clamp_min(0).sqrt(), estimate.clamp_min(0).sqrt()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a))
