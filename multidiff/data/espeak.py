"""Offline spoken digits synthesized with Debian's ``espeak-ng`` and cached as WAV files.

Clip i speaks the digit i mod 10 ("zero" … "nine") with a voice, a voice variant, a speed and a
pitch drawn from a generator seeded by ``seed``, so a given seed always gives the same clips. The
clips and a ``manifest.json`` describing each one live under the cache directory in a folder
named by a hash of the settings; a second run with the same settings synthesizes nothing (and no
longer needs espeak-ng at all).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..files import atomic_write_text
from .audio import DIGIT_WORDS

#: espeak-ng's own English voices (the MBROLA ones need extra packages and fall back silently).
DEFAULT_VOICES = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
#: Voice variants that still sound like speech (whispers, robots and "Demonic" left out).
DEFAULT_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "croak", "klatt", "klatt2",
    "klatt3", "adam", "Andy", "aunty", "belinda", "benjamin", "caleb", "david", "ed", "edward", "grandma",
    "grandpa", "john", "linda", "max", "michel", "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac",
)  # fmt: skip
INSTALL_HINT = "install it with 'apt-get install espeak-ng', or point data.path at a folder of WAV files (one sub-folder per label)"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SynthSettings:
    """What the synthesized set depends on (its cache key). Speeds in words per minute, pitch 0–99."""

    clips: int = 3000
    seed: int = 0
    voices: tuple[str, ...] = DEFAULT_VOICES
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    speed: tuple[int, int] = (110, 220)
    pitch: tuple[int, int] = (15, 85)

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def plan(self) -> list[dict[str, Any]]:
        """The clips to synthesize: word, label and voice settings for each, from the seed alone."""
        rng = np.random.default_rng(self.seed)
        out = []
        for i in range(self.clips):
            label = i % 10
            out.append({
                "file": f"{i:05d}_{DIGIT_WORDS[label]}.wav",
                "label": label,
                "word": DIGIT_WORDS[label],
                "voice": self.voices[int(rng.integers(len(self.voices)))],
                "variant": self.variants[int(rng.integers(len(self.variants)))] if self.variants else None,
                "speed": int(rng.integers(self.speed[0], self.speed[1] + 1)),
                "pitch": int(rng.integers(self.pitch[0], self.pitch[1] + 1)),
            })  # fmt: skip
        return out


def settings_from_config(cfg: dict[str, Any]) -> SynthSettings:
    """SynthSettings from the recipe's data section; UserError naming the bad field."""

    def pair(key: str, lo: int, hi: int) -> tuple[int, int]:
        v = cfg[key]
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(a, int) for a in v) and lo <= v[0] <= v[1] <= hi):
            raise UserError(f"data.{key} must be [min, max] integers within [{lo}, {hi}], got {v!r}")
        return int(v[0]), int(v[1])

    def names(key: str, default: Sequence[str]) -> tuple[str, ...]:
        v = cfg[key]
        if v is None:
            return tuple(default)
        if not isinstance(v, (list, tuple)) or not all(isinstance(a, str) and a for a in v) or (key == "voices" and not v):
            raise UserError(f"data.{key} must be a list of names (or null for the defaults), got {v!r}")
        return tuple(v)

    clips = cfg["clips"]
    if not isinstance(clips, int) or clips < 20:
        raise UserError(f"data.clips must be an integer ≥ 20 (two per digit), got {clips!r}")
    return SynthSettings(
        clips=clips, seed=int(cfg["synth_seed"]), voices=names("voices", DEFAULT_VOICES),
        variants=names("variants", DEFAULT_VARIANTS), speed=pair("speed", 80, 450), pitch=pair("pitch", 0, 99),
    )  # fmt: skip


def synthesize_digits(settings: SynthSettings, cache_dir: Path, workers: int = 2) -> tuple[Path, list[dict[str, Any]], int]:
    """Synthesize (or reuse) the clips; returns (folder, manifest entries, number synthesized now)."""
    folder = Path(cache_dir) / "audio" / f"espeak-digits-{settings.key()}"
    manifest = folder / MANIFEST
    if manifest.is_file():
        entries = json.loads(manifest.read_text())["clips"]
        if all((folder / e["file"]).is_file() for e in entries):
            return folder, entries, 0
    exe = espeak_executable()
    _check_names(exe, settings)
    folder.mkdir(parents=True, exist_ok=True)
    entries = settings.plan()
    todo = [e for e in entries if not (folder / e["file"]).is_file()]  # an interrupted run's clips are kept

    def one(e: dict[str, Any]) -> None:
        fd, name = tempfile.mkstemp(prefix=f".{e['file']}.", suffix=".tmp.wav", dir=folder)  # unique per writer
        os.close(fd)
        tmp = Path(name)
        voice = e["voice"] + (f"+{e['variant']}" if e["variant"] else "")
        cmd = [exe, "-v", voice, "-s", str(e["speed"]), "-p", str(e["pitch"]), "-w", str(tmp), e["word"]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not tmp.stat().st_size:
            tmp.unlink(missing_ok=True)
            raise UserError(f"espeak-ng failed for {' '.join(cmd[1:-3])} ({done.stderr.strip() or done.returncode})")
        os.replace(tmp, folder / e["file"])

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # threads only wait on subprocesses
        list(pool.map(one, todo))
    record = {"format": "multidiff.espeak_digits", "version": 1, "espeak": espeak_version(exe),
              "settings": asdict(settings), "clips": entries}  # fmt: skip
    atomic_write_text(manifest, json.dumps(record, indent=1))  # written last: a manifest means the set is complete
    return folder, entries, len(todo)


def espeak_executable() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError(f"data.source=espeak needs the espeak-ng program, which is not installed; {INSTALL_HINT}")
    return exe


def espeak_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return out.split("Data at")[0].strip()


def _listed(exe: str, which: str) -> tuple[set[str], set[str]]:
    """Names and files from ``espeak-ng --voices=WHICH`` (columns: Pty Language Age/Gender VoiceName File ...)."""
    out = subprocess.run([exe, f"--voices={which}"], capture_output=True, text=True).stdout
    names, files = set(), set()
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.update((cols[1], cols[3]))
            files.add(cols[4].split("/")[-1])
    return names, files


def _check_names(exe: str, settings: SynthSettings) -> None:
    """Refuse unknown voices and variants: espeak-ng would silently fall back to its default voice."""
    voices, _ = _listed(exe, "en")
    bad = [v for v in settings.voices if v not in voices]
    if bad:
        raise UserError(f"data.voices: espeak-ng has no English voice {bad[0]!r} (see `espeak-ng --voices=en`)")
    if settings.variants:
        _, files = _listed(exe, "variant")  # `-v VOICE+NAME` finds a variant by its file name
        bad = [v for v in settings.variants if v not in files]
        if bad:
            raise UserError(f"data.variants: espeak-ng has no voice variant {bad[0]!r} (see `espeak-ng --voices=variant`)")
