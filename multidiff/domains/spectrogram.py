"""Audio as log-mel spectrograms: spoken digits (espeak-ng, offline), a folder of WAVs, or Speech
Commands; diffused as continuous [1, n_mels, frames] grids, decoded back to listenable WAVs.

Each mel bin is standardized with the mean and std of the training split (saved in the run
directory as ``spectrogram_stats.json``), so x has σ_data ≈ 1 and every band matters equally to
the loss. The NELBO is a continuous density in bits per spectrogram bin of that standardized
log-mel (see :data:`SpectrogramDomain.nelbo_unit`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..data import audio
from ..data.splits import cap, holdout
from ..diffusion.model import ContinuousDiffusion, DiffusionModel
from ..errors import UserError
from ..metrics.features import ClassifierScore
from ..nets.unet import UNET_DEFAULTS, UNET_RULES, unet_from_config
from ..settings import SPLIT_RULES, choice, integer, number, text
from ..textdata import parse_json
from .base import Domain, DomainData
from .grids import save_grid_png
from .logmel import LogMel, MelSettings

STATS_FILE = "spectrogram_stats.json"
#: Decibels shown in the sample PNGs below the loudest typical level (80 dB, as in audio editors).
DISPLAY_RANGE_DB = 80.0
#: Decoding limits standardized log-mel values to ± this many stds (see decode_audio).
DECODE_LIMIT = 8.0


class SpectrogramDomain(Domain):
    name = "spectrogram"
    joinable = True
    # A continuous density (Gaussian decoder at σ_min) of the standardized log-mel: it can be
    # negative, and it is comparable across schedules because data, statistics, quadrature and
    # noise are identical. ``eval.json``'s ``nelbo_db_offset`` converts it to dB units.
    nelbo_unit = "bits/bin"
    headline_metrics = {"fd": "Fréchet distance", "classes_covered": "classes covered"}
    quality_metrics = {"fd": "lower", "classes_covered": None}
    data_defaults = {
        "source": "espeak",  # espeak | folder | hub; a data.path that is a folder implies folder
        "path": None,  # folder of .wav/.flac/.ogg (labels = sub-folder names), or the hub dataset id
        "hub_config": "v0.02",  # the hub dataset's configuration (Speech Commands: v0.01 / v0.02)
        "classes": None,  # labels to keep, in label order; default: the ten digit words (folder: all sub-folders)
        # espeak-ng synthesis (source=espeak)
        "clips": 3000,  # clips in all, digits in turn (300 per digit)
        "synth_seed": 0,  # the synthesized set depends only on this (not on the training seed)
        "voices": None,  # espeak-ng English voices; null: the eight built-in ones
        "variants": None,  # voice variants (m1, f3, croak, ...); null: 40 speech-like ones; [] none
        "speed": [110, 220],  # words per minute, uniform integers in [min, max]
        "pitch": [15, 85],  # espeak-ng pitch 0–99, uniform integers in [min, max]
        # every clip, whatever the source
        "sample_rate": 16000,  # Hz; sources are resampled to it
        "duration": 1.0,  # seconds; silence trimmed, then centred and zero-padded or cropped
        "trim_db": 40.0,  # trim leading/trailing 10 ms frames this far below the loudest; null keeps them
        "peak": 0.9,  # peak amplitude of every clip; null keeps source levels
        "dither": 1.0e-4,  # seeded noise floor (≈ −80 dBFS) so silence has no point mass in the log-mel
        # log-mel features
        "n_mels": 64,
        "frames": 64,  # hop = samples // frames (16 kHz, 1 s, 64 frames: 250 samples = 15.6 ms)
        "n_fft": 1024,
        "f_min": 0.0,  # Hz
        "f_max": None,  # Hz; null: sample_rate / 2
        "griffin_lim_iters": 32,  # decoding: Griffin-Lim iterations per WAV
        # split
        "val_fraction": 0.2,  # held-out share, for sources without their own validation split
        "split_seed": 0,
        "limit": None,  # use at most this many training clips
    }
    model_defaults = dict(UNET_DEFAULTS)
    data_rules = {
        "source": choice(("espeak", "folder", "hub")), "path": text(optional=True), "hub_config": text(optional=True),
        "clips": integer(20), "synth_seed": integer(0), "sample_rate": integer(1000), "duration": number(0, open_lo=True),
        "trim_db": number(0, open_lo=True, optional=True), "peak": number(0, 1, open_lo=True, optional=True),
        "dither": number(0, 0.1, open_hi=True), "n_mels": integer(1), "frames": integer(1), "n_fft": integer(16),
        "f_min": number(0), "f_max": number(0, open_lo=True, optional=True), "griffin_lim_iters": integer(1), **SPLIT_RULES,
    }  # fmt: skip
    model_rules = UNET_RULES

    def __init__(self, recipe: dict[str, Any], cache_dir: Path) -> None:
        super().__init__(recipe, cache_dir)
        cfg = self.data_cfg
        try:
            self.clip_format = audio.ClipFormat(
                sample_rate=int(cfg["sample_rate"]), duration=float(cfg["duration"]),
                trim_db=None if cfg["trim_db"] is None else float(cfg["trim_db"]),
                peak=None if cfg["peak"] is None else float(cfg["peak"]), dither=float(cfg["dither"]),
            )  # fmt: skip
            mel = MelSettings(
                sample_rate=self.clip_format.sample_rate, samples=self.clip_format.samples, n_mels=int(cfg["n_mels"]),
                frames=int(cfg["frames"]), n_fft=int(cfg["n_fft"]), f_min=float(cfg["f_min"]),
                f_max=None if cfg["f_max"] is None else float(cfg["f_max"]),
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise UserError(f"data: invalid audio settings ({exc})") from None
        if self.clip_format.sample_rate < 1000 or self.clip_format.samples < 256:
            raise UserError(f"data.sample_rate/duration too small: {self.clip_format.sample_rate} Hz × {self.clip_format.duration} s")
        if self.clip_format.peak is not None and not 0 < self.clip_format.peak <= 1:
            raise UserError(f"data.peak must be in (0, 1] or null, got {self.clip_format.peak}")
        if not 0 <= self.clip_format.dither < 0.1:
            raise UserError(f"data.dither must be in [0, 0.1), got {self.clip_format.dither}")
        self.logmel = LogMel(mel)
        self.stats: Optional[dict[str, Tensor]] = None  # per-mel mean/std, set by load()

    # ---- data ------------------------------------------------------------------------------------
    def _source(self) -> str:
        source, path = self.data_cfg["source"], self.data_cfg["path"]
        if source not in ("espeak", "folder", "hub"):
            raise UserError(f"data.source: unknown source {source!r}; choose espeak, folder or hub")
        if source != "hub" and path:
            return "folder"  # --set data.path=DIR works from the espeak recipe
        if source == "folder":
            raise UserError("data.source=folder needs data.path=DIR (sound files in one sub-folder per label)")
        return source

    def _classes(self) -> Optional[list[str]]:
        classes = self.data_cfg["classes"]
        if classes is not None and (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes)):
            raise UserError(f"data.classes must be a list of at least two label names, got {classes!r}")
        return classes

    def clip_set(self) -> audio.ClipSet:
        """The configured source's raw clips (read lazily) and labels."""
        cfg, fmt, source = self.data_cfg, self.clip_format, self._source()
        geometry = f"{fmt.sample_rate}Hz-{fmt.duration:g}s"
        if source == "espeak":
            from ..data.espeak import settings_from_config, synthesize_digits

            if cfg["classes"] is not None:
                raise UserError("data.classes selects labels of a folder or hub source; espeak always speaks the ten digits")
            settings = settings_from_config(cfg)
            folder, entries, _ = synthesize_digits(settings, self.cache_dir, workers=min(4, os.cpu_count() or 1))
            clips = (audio.read_clip(folder / e["file"]) for e in entries)
            labels = np.array([e["label"] for e in entries], dtype=np.int64)
            return audio.ClipSet(clips, labels, list(audio.DIGIT_WORDS), f"espeak_digits-{settings.key()}-{geometry}")
        if source == "folder":
            files, labels, classes = audio.folder_clips(cfg["path"], self._classes())
            name = f"{Path(cfg['path']).resolve().name}-{geometry}"
            return audio.ClipSet((audio.read_clip(p) for p in files), labels, classes, name)
        name = cfg["path"] or "google/speech_commands"
        classes = self._classes() or list(audio.DIGIT_WORDS)
        splits = audio.load_hub_clips(name, cfg["hub_config"], classes, cfg["limit"])
        out = audio.ClipSet(*splits["train"], classes, f"{name.split('/')[-1]}-{geometry}")
        if "validation" in splits:
            out.val, out.val_labels = splits["validation"]
        return out

    def log_mel(self, clips: Any, dither_seed: int = 0) -> Tensor:
        """Raw clips → conditioned → [N, 1, n_mels, frames] natural-log mel power (chunk by chunk)."""
        chunks = [self.logmel(w) for w in audio.conditioned_chunks(clips, self.clip_format, dither_seed)]
        if not chunks:
            raise UserError("data: the source holds no audio clips")
        return torch.cat(chunks)[:, None]

    def load(self, run_dir: Optional[Path] = None) -> DomainData:
        cfg = self.data_cfg
        source = self.clip_set()
        train, train_y = self.log_mel(source.clips), source.labels
        val, val_y = (self.log_mel(source.val, dither_seed=1), source.val_labels) if source.val is not None else (None, None)
        if val is None:  # a fixed split, independent of the training seed
            train, train_y, val, val_y = holdout(train, train_y, cfg["val_fraction"], cfg["split_seed"], cfg["limit"])
        else:
            train, train_y = cap(train, train_y, cfg["limit"])
        if train.shape[0] < 2:
            raise UserError(f"data: need at least 2 training clips, got {train.shape[0]}")
        saved = Path(run_dir) / STATS_FILE if run_dir is not None else None
        self.stats = read_stats(saved, self.logmel.s.n_mels) if saved is not None and saved.is_file() else fit_stats(train)
        to_t = lambda a: torch.from_numpy(a) if a is not None else None  # noqa: E731
        return DomainData(
            train=self.normalize(train),
            val=self.normalize(val),
            dataset=f"{source.name}-{self.logmel.s.n_mels}x{self.logmel.s.frames}",
            train_labels=to_t(train_y),
            val_labels=to_t(val_y),
            num_classes=len(source.classes) if train_y is not None else 0,
            info={"classes": source.classes, "train_clips": int(train.shape[0]), "val_clips": int(val.shape[0])},
        )

    def normalize(self, log_mel: Tensor) -> Tensor:
        assert self.stats is not None
        return (log_mel - self.stats["mean"][:, None]) / self.stats["std"][:, None]

    def denormalize(self, x: Tensor) -> Tensor:
        assert self.stats is not None
        return x * self.stats["std"][:, None] + self.stats["mean"][:, None]

    def save_artifacts(self, data: DomainData, run_dir: Path) -> None:
        assert self.stats is not None, "load() first"
        write_stats(Path(run_dir) / STATS_FILE, self.stats, data.dataset)

    # ---- model -----------------------------------------------------------------------------------
    def build_model(self, data: DomainData, sigma_data: float) -> DiffusionModel:
        backbone = unet_from_config(self.model_cfg, in_channels=data.train.shape[1])
        return ContinuousDiffusion(backbone, sigma_data, recon="gaussian")

    # ---- samples and metrics ---------------------------------------------------------------------
    def decode_audio(self, x: Tensor) -> Tensor:
        """Standardized log-mel [N, 1, n_mels, frames] → waveforms [N, samples] in [−1, 1].

        Values are first limited to ±DECODE_LIMIT stds per mel bin (the training data span about
        −2 … +4.5), so an untrained or diverged model still decodes to finite audio; a clip whose
        reconstruction peaks above 0.99 is scaled down to 0.99 instead of clipped.
        """
        x = torch.nan_to_num(x.float(), nan=0.0).clamp(-DECODE_LIMIT, DECODE_LIMIT)
        waves = self.logmel.invert(self.denormalize(x)[:, 0], n_iter=int(self.data_cfg["griffin_lim_iters"]))
        peak = waves.abs().amax(dim=1, keepdim=True)
        return waves * torch.where(peak > 0.99, 0.99 / peak.clamp_min(1e-12), torch.ones_like(peak))

    def write_samples(self, decoded: Tensor, out_dir: Path, tag: str) -> list[Path]:
        """``TAG.png`` (spectrograms, low frequencies at the bottom), ``TAG.npy`` (log-mel) and the
        folder ``TAG/`` of ``NNN.wav`` files (returned as the folder, so reports link it once)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        log_mel = self.denormalize(decoded.float())
        npy = out_dir / f"{tag}.npy"
        np.save(npy, log_mel[:, 0].numpy().astype(np.float32))
        png = save_grid_png(self.display(torch.nan_to_num(log_mel)), out_dir / f"{tag}.png", min_tile=96)
        wav_dir = out_dir / tag
        wav_dir.mkdir(exist_ok=True)
        waves = self.decode_audio(decoded)
        rate = self.clip_format.sample_rate
        for i, w in enumerate(waves):
            audio.write_wav(wav_dir / f"{i:03d}.wav", w.numpy(), rate)
        return [png, npy, wav_dir]

    def display(self, log_mel: Tensor) -> Tensor:
        """[N, 1, n_mels, frames] log-mel → [N, 3, n_mels, frames] colours in [0, 1] (magma, 80 dB range)."""
        from matplotlib import colormaps

        assert self.stats is not None
        top = float((self.stats["mean"] + 2.5 * self.stats["std"]).max())
        span = DISPLAY_RANGE_DB * math.log(10) / 10  # 80 dB in natural-log power units
        v = ((log_mel[:, 0] - (top - span)) / span).clamp(0, 1).flip(1)  # low frequencies at the bottom
        rgb = colormaps["magma"](v.numpy())[..., :3]
        return torch.from_numpy(rgb).float().permute(0, 3, 1, 2)

    def make_metric(self, data: DomainData) -> Callable[[Tensor], dict[str, Any]]:
        self._classifier = ClassifierScore(classifier_key(data), classifier_data(data), steps=CLASSIFIER_STEPS).prepare()
        return lambda decoded: self._score(self._classifier, decoded, data)

    def classify(self, decoded: Tensor) -> Any:
        return self._classifier.labels(classifier_view(decoded))

    def load_given(self, path: Path, data: DomainData) -> Tensor:
        """A folder of sound files (or one file), conditioned and standardized like the data."""
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".wav", ".flac", ".ogg")) if p.is_dir() else [p]
        if not files or not all(f.is_file() for f in files):
            raise UserError(f"{path}: no .wav/.flac/.ogg files")
        return self.normalize(self.log_mel(audio.read_clip(f) for f in files))

    def _score(self, score: ClassifierScore, decoded: Tensor, data: DomainData) -> dict[str, Any]:
        """Fréchet distance and label histogram in the evaluation classifier (see :func:`classifier_view`)."""
        assert self.stats is not None
        out = score(classifier_view(decoded))
        out["classes"] = data.info.get("classes") if data.train_labels is not None else None
        hist = out["sample_class_histogram"]
        out["classes_covered"] = int(sum(1 for c in hist if c > 0))
        # bits/bin of the standardized log-mel + this = bits/bin of the log-mel measured in dB
        out["nelbo_db_offset"] = float(torch.log2(self.stats["std"] * 10 / math.log(10)).mean())
        names = out["classes"] or [str(i) for i in range(len(hist))]
        acc = out["classifier"].get("val_accuracy")
        out["notes"] = [
            f"Evaluation classifier ({'%.1f %% held-out accuracy' % (100 * acc) if acc is not None else out['classifier']['labels']}): "
            f"labels of {sum(hist)} samples: " + " · ".join(f"{n} {c}" for n, c in zip(names, hist)),
            f"NELBO is a density of the standardized log-mel (it can be negative); add {out['nelbo_db_offset']:.3f} "
            "for bits per bin of the log-mel in dB.",
        ]
        return out


# ---- the evaluation classifier's view of a spectrogram ---------------------------------------------

#: Optimizer steps of the evaluation classifier (batch 128); part of its cache key.
CLASSIFIER_STEPS = 600


def classifier_view(x: Tensor) -> Tensor:
    """[N, 1, n_mels, frames] → [N, n_mels, 1, frames]: mel bins become channels.

    The shared grid classifier then convolves along time only, as temporal-convolution keyword
    spotters do (TC-ResNet): about 10× cheaper than 2-D convolutions over a 64×64 grid, and
    99.8 % accurate on the 600 held-out synthesized digits of audio_digits.yaml.
    """
    return x[:, 0, :, None, :].contiguous()


def classifier_data(data: DomainData) -> DomainData:
    return dataclasses.replace(data, train=classifier_view(data.train), val=classifier_view(data.val))


def classifier_key(data: DomainData) -> str:
    return f"spectrogram-tc{CLASSIFIER_STEPS}-{data.fingerprint}"


# ---- normalization statistics (fitted on the training split, saved with the run) -------------------


def fit_stats(log_mel: Tensor) -> dict[str, Tensor]:
    """Per-mel mean and std over clips and frames of [N, 1, n_mels, frames]."""
    per_mel = log_mel.transpose(0, 2).reshape(log_mel.shape[2], -1).double()
    return {"mean": per_mel.mean(1).float(), "std": per_mel.std(1).clamp_min(1e-3).float()}


def write_stats(path: Path, stats: dict[str, Tensor], dataset: str) -> None:
    record = {"format": "multidiff.logmel_stats", "version": 1, "dataset": dataset,
              "feature": "natural log of mel power + 1e-10, standardized per mel bin",
              "mean": stats["mean"].tolist(), "std": stats["std"].tolist()}  # fmt: skip
    Path(path).write_text(json.dumps(record, indent=1))


def read_stats(path: Path, n_mels: int) -> dict[str, Tensor]:
    """The statistics a run saved; UserError naming the file and field if they do not fit."""
    try:
        record = parse_json(Path(path).read_text(), str(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the spectrogram statistics ({exc})") from None
    out = {}
    for key in ("mean", "std"):
        values = record.get(key) if isinstance(record, dict) else None
        if not isinstance(values, list) or len(values) != n_mels or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise UserError(f"{path}: field '{key}' must be {n_mels} finite numbers (one per mel bin)")
        out[key] = torch.tensor(values, dtype=torch.float32)
    if not bool((out["std"] > 0).all()):
        raise UserError(f"{path}: field 'std' must be positive")
    return out
