"""Audio clips for the spectrogram domain: WAV I/O, conditioning to a fixed rate and length, and
the local-folder and Hugging Face sources (the espeak-ng synthesizer lives in ``data.espeak``).

Every source yields mono float32 clips at the recipe's rate, all exactly ``duration`` long:
silence trimmed from both ends, the rest centred in the window (zero-padded or cropped equally on
both sides), scaled to a fixed peak, plus a faint seeded noise floor (dither) so the log-mel has
no point mass at digital silence.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as T
from torch import Tensor

from ..errors import UserError
from .splits import load_hub_dataset

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class ClipFormat:
    """How every clip is conditioned. Rates in Hz, duration in seconds, levels relative to full scale."""

    sample_rate: int = 16000
    duration: float = 1.0
    trim_db: Optional[float] = 40.0  # drop leading/trailing 10 ms frames this far below the loudest; None keeps all
    peak: Optional[float] = 0.9  # scale each clip to this peak amplitude; None keeps the source level
    dither: float = 1e-4  # std of the added noise floor (1e-4 ≈ −80 dBFS); 0 disables

    @property
    def samples(self) -> int:
        return int(round(self.sample_rate * self.duration))


@dataclass
class ClipSet:
    """Raw clips of one source as (samples, rate) pairs, read lazily, with labels into ``classes``.

    ``labels`` is None for unlabelled data; ``val`` is the source's own held-out split, if any.
    """

    clips: Iterable[tuple[np.ndarray, int]]
    labels: Optional[np.ndarray]
    classes: list[str]
    name: str
    val: Optional[Iterable[tuple[np.ndarray, int]]] = None
    val_labels: Optional[np.ndarray] = None


def read_clip(path: Path) -> tuple[np.ndarray, int]:
    """A sound file as mono float32 samples and its rate; UserError naming the file if unreadable."""
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises its own LibsndfileError / RuntimeError
        raise UserError(f"cannot read audio file {path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return _mono(wave, str(path)), int(rate)


def decode_clip_bytes(data: bytes, what: str) -> tuple[np.ndarray, int]:
    """Encoded audio bytes (WAV/FLAC/OGG, e.g. from a Hugging Face dataset) as mono float32 and rate."""
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise UserError(f"cannot decode audio of {what} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return _mono(wave, what), int(rate)


def _mono(wave: np.ndarray, what: str) -> np.ndarray:
    if wave.shape[0] == 0:
        raise UserError(f"audio file {what} is empty")
    return wave.mean(axis=1)  # average the channels


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM WAV; values are clipped to [−1, 1]."""
    sf.write(str(path), np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0), int(sample_rate), subtype="PCM_16")
    return Path(path)


def trim_silence(wave: Tensor, sample_rate: int, trim_db: float) -> Tensor:
    """Drop leading/trailing 10 ms frames whose RMS is more than ``trim_db`` below the loudest frame's."""
    hop = max(1, sample_rate // 100)
    n = wave.shape[0] // hop
    if n < 2:
        return wave
    rms = wave[: n * hop].reshape(n, hop).square().mean(1).sqrt()
    loud = torch.nonzero(rms >= rms.max() * 10 ** (-trim_db / 20)).flatten()
    if loud.numel() == 0:  # all silent
        return wave
    return wave[int(loud[0]) * hop : (int(loud[-1]) + 1) * hop]


def centre(wave: Tensor, length: int) -> Tensor:
    """Zero-pad or crop equally on both sides to exactly ``length`` samples."""
    extra = length - wave.shape[0]
    if extra >= 0:
        return torch.nn.functional.pad(wave, (extra // 2, extra - extra // 2))
    start = (-extra) // 2
    return wave[start : start + length]


def conditioned_chunks(
    clips: Iterable[tuple[np.ndarray, int]], fmt: ClipFormat, dither_seed: int = 0, chunk: int = 256
) -> Iterator[Tensor]:
    """Raw (samples, rate) clips → chunks [≤chunk, fmt.samples]: resampled, trimmed, centred, levelled, dithered.

    Chunks keep memory flat on large sets. The dither of clip i depends only on (dither_seed, i).
    """
    resamplers: dict[int, torch.nn.Module] = {}  # one per source rate: building the kernel is the slow part
    batch: list[Tensor] = []
    for i, (wave, rate) in enumerate(clips):
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if rate != fmt.sample_rate:
            if rate not in resamplers:
                resamplers[rate] = T.Resample(rate, fmt.sample_rate)
            x = resamplers[rate](x)
        if fmt.trim_db is not None:
            x = trim_silence(x, fmt.sample_rate, float(fmt.trim_db))
        x = centre(x, fmt.samples)
        top = float(x.abs().max())
        if fmt.peak is not None and top > 0:
            x = x * (float(fmt.peak) / top)
        if fmt.dither > 0:
            g = torch.Generator().manual_seed(dither_seed * 1_000_003 + i)
            x = x + fmt.dither * torch.randn(fmt.samples, generator=g)
        batch.append(x)
        if len(batch) == chunk:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def condition(clips: Iterable[tuple[np.ndarray, int]], fmt: ClipFormat, dither_seed: int = 0) -> Tensor:
    """All clips conditioned at once: [N, fmt.samples] (see :func:`conditioned_chunks`)."""
    chunks = list(conditioned_chunks(clips, fmt, dither_seed))
    if not chunks:
        raise UserError("no audio clips to load")
    return torch.cat(chunks)


# ---- a local folder of sound files ---------------------------------------------------------------


def folder_clips(directory: str, classes: Optional[Sequence[str]] = None) -> tuple[list[Path], Optional[np.ndarray], list[str]]:
    """Sound files under ``directory``; labels from the first sub-folder name.

    Files directly in ``directory`` (no sub-folders at all) are unlabelled. Sub-folders whose name
    starts with '_' (e.g. Speech Commands' ``_background_noise_``) are skipped. ``classes`` selects
    and orders the sub-folders (label i = classes[i]); by default all of them, sorted.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"data.path: audio folder {root} not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    files = [p for p in files if not p.relative_to(root).parts[0].startswith("_")]
    if not files:
        raise UserError(f"data.path: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}")
    nested = [p for p in files if len(p.relative_to(root).parts) > 1]
    if not nested:
        return files, None, []
    if len(nested) != len(files):
        loose = next(p for p in files if len(p.relative_to(root).parts) == 1)
        raise UserError(f"data.path: {loose} is not in a label sub-folder; put every file in one (the folder name is its label)")
    names = [p.relative_to(root).parts[0] for p in files]
    found = sorted(set(names))
    wanted = list(classes) if classes else found
    missing = [c for c in wanted if c not in found]
    if missing:
        raise UserError(f"data.classes: {root} has no sub-folder {missing[0]!r} (found: {', '.join(found[:12])})")
    index = {c: i for i, c in enumerate(wanted)}
    keep = [i for i, n in enumerate(names) if n in index]
    return [files[i] for i in keep], np.array([index[names[i]] for i in keep], dtype=np.int64), wanted


# ---- Speech Commands (or another labelled audio dataset) through Hugging Face `datasets` ----------


def load_hub_clips(name: str, config: Optional[str], classes: Sequence[str], limit: Optional[int]) -> dict[str, Any]:
    """Clips of ``classes`` from a hub dataset with an ``audio`` column and a class-label column.

    Returns {split: (clips, labels)} for 'train' and, when present, 'validation'. Audio is decoded
    with soundfile from the stored bytes (``datasets``' own decoder would need torchcodec).
    """
    ds = load_hub_dataset(name, config, offline_hint="use data.source=espeak or data.path=FOLDER of WAV files")
    return {split: hub_split_clips(ds[split], classes, limit if split == "train" else None, f"{name}/{split}")
            for split in ("train", "validation") if split in ds}  # fmt: skip


def hub_split_clips(split: Any, classes: Sequence[str], limit: Optional[int], what: str) -> tuple[list, np.ndarray]:
    """One split → ([(samples, rate)], labels into ``classes``), keeping only rows of those classes."""
    import datasets

    label_key = next((k for k in ("label", "labels", "command") if k in split.features), None)
    if label_key is None or "audio" not in split.features:
        raise UserError(f"{what}: expected an 'audio' column and a 'label' column, found {', '.join(split.features)}")
    feature = split.features[label_key]
    names = feature.names if hasattr(feature, "names") else None
    labels = split[label_key]
    as_name = (lambda v: names[v]) if names else str  # noqa: E731
    index = {c: i for i, c in enumerate(classes)}
    rows = [i for i, v in enumerate(labels) if as_name(v) in index]
    if limit:
        rows = rows[: int(limit)]
    if not rows:
        raise UserError(f"{what}: no rows with labels {', '.join(classes)}")
    raw = split.cast_column("audio", datasets.Audio(decode=False)).select(rows)
    clips = []
    for j, item in enumerate(raw["audio"]):
        if item.get("bytes"):
            clips.append(decode_clip_bytes(item["bytes"], f"{what} row {rows[j]}"))
        else:
            clips.append(read_clip(Path(item["path"])))
    return clips, np.array([index[as_name(labels[i])] for i in rows], dtype=np.int64)
