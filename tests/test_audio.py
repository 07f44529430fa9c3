"""The spectrogram domain: espeak-ng synthesis and its cache, clip conditioning, the folder and hub
sources, the mel round trip, the evaluation classifier, and training runs that write real WAVs."""
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, require
from PIL import Image

from multidiff.cli import main
from multidiff.data import audio, espeak
from multidiff.domains import spectrogram as spec
from multidiff.domains.logmel import LogMel, MelSettings, spectral_convergence
from multidiff.errors import UserError
from multidiff.metrics import features as feats
from multidiff.metrics.frechet import frechet_between
from multidiff.recipe import load_recipe_file

TINY = REPO / "recipes" / "audio_digits_tiny.yaml"
HAVE_ESPEAK = shutil.which("espeak-ng") is not None


def domain(**data) -> spec.SpectrogramDomain:
    """The tiny recipe's domain (16 kHz, 1 s, 64 mels × 64 frames, 500 clips) with overrides."""
    base = load_recipe_file(TINY)["data"]
    return spec.SpectrogramDomain({"data": {**base, **data}, "model": {}}, feats.cache_root())


@pytest.fixture(scope="module")
def tiny():
    """The tiny recipe's domain and data (synthesized once per test session into the session cache)."""
    require(HAVE_ESPEAK, "espeak-ng")
    d = domain()
    return d, d.load()


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


# ---- synthesis -------------------------------------------------------------------------------------


def test_synthesis_is_deterministic_per_seed_and_reuses_its_cache(tmp_path, monkeypatch):
    require(HAVE_ESPEAK, "espeak-ng")
    settings = espeak.SynthSettings(clips=20, seed=5)
    folder, entries, made = espeak.synthesize_digits(settings, tmp_path / "a")
    assert made == 20 and [e["label"] for e in entries] == [i % 10 for i in range(20)]
    assert [e["word"] for e in entries[:10]] == list(audio.DIGIT_WORDS)
    for e in entries:  # real speech: a plausible length and level
        wave, rate = sf.read(folder / e["file"])
        assert 0.25 < len(wave) / rate < 2.5 and np.sqrt(np.mean(wave**2)) > 0.01, e
    stamps = {e["file"]: (folder / e["file"]).stat().st_mtime_ns for e in entries}

    monkeypatch.setattr(espeak.shutil, "which", lambda name: None)  # a second run needs no espeak-ng at all
    again_folder, again, made = espeak.synthesize_digits(settings, tmp_path / "a")
    assert made == 0 and again == entries and again_folder == folder
    assert {e["file"]: (folder / e["file"]).stat().st_mtime_ns for e in entries} == stamps
    monkeypatch.undo()

    other_folder, _, made = espeak.synthesize_digits(settings, tmp_path / "b")  # same seed elsewhere
    assert made == 20
    assert all((folder / e["file"]).read_bytes() == (other_folder / e["file"]).read_bytes() for e in entries)
    reseeded = espeak.SynthSettings(clips=20, seed=6)
    assert reseeded.key() != settings.key() and reseeded.plan() != settings.plan()
    new_folder, new_entries, _ = espeak.synthesize_digits(reseeded, tmp_path / "a")
    differ = sum((folder / a["file"]).read_bytes() != (new_folder / b["file"]).read_bytes() for a, b in zip(entries, new_entries))
    assert differ >= 15
    manifest = json.loads((folder / espeak.MANIFEST).read_text())
    assert manifest["settings"]["seed"] == 5 and len(manifest["clips"]) == 20


def test_missing_espeak_says_how_to_install_it_or_use_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(espeak.shutil, "which", lambda name: None)
    out = tmp_path / "run"
    code = main(["train", str(TINY), "--out", str(out), "--set", "data.synth_seed=917"])  # nothing cached for it
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "apt-get install espeak-ng" in err and "data.path" in err
    assert not out.exists()


def test_bad_audio_settings_are_one_line_errors(tmp_path, capsys):
    for setting, needle in [("data.n_mels=512", "data.n_mels=512 is too many"), ("data.n_fft=64", "data.n_fft"),
                            ("data.f_max=12000", "data.f_min/f_max"), ("data.nmels=32", "no setting 'data.nmels'"),
                            ("data.source=tape", "data.source"), ("data.peak=3", "data.peak")]:  # fmt: skip
        assert main(["train", str(TINY), "--out", str(tmp_path / "r"), "--set", setting]) == 2, setting
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, (setting, err)
    assert not (tmp_path / "r").exists()


def test_unknown_voice_or_variant_is_refused():
    require(HAVE_ESPEAK, "espeak-ng")
    with pytest.raises(UserError, match="data.voices"):
        espeak.synthesize_digits(espeak.SynthSettings(clips=20, voices=("en-klingon",)), Path("/nonexistent"))
    with pytest.raises(UserError, match="data.variants"):
        espeak.synthesize_digits(espeak.SynthSettings(clips=20, variants=("m3", "nosuchvariant")), Path("/nonexistent"))
    with pytest.raises(UserError, match="data.speed"):
        domain(speed=[300, 100]).load()


# ---- conditioning and sources -----------------------------------------------------------------------


def test_clips_are_resampled_trimmed_centred_and_levelled():
    fmt = audio.ClipFormat(sample_rate=16000, duration=1.0, trim_db=40.0, peak=0.9, dither=1e-4)
    rate = 22050
    tone = np.concatenate([np.zeros(rate // 2, np.float32), sine(440, rate, 0.4), np.zeros(rate // 10, np.float32)])
    (x,) = audio.condition([(tone, rate)], fmt)
    assert x.shape == (16000,) and abs(float(x.abs().max()) - 0.9) < 2e-3
    loud = torch.nonzero(x.abs() > 0.01).flatten()
    assert abs((int(loud[0]) + int(loud[-1])) / 2 - 8000) < 200  # the tone sits in the middle
    assert abs(int(loud[-1]) - int(loud[0]) - 0.4 * 16000) < 400  # 0.4 s long, leading silence gone
    spectrum = torch.fft.rfft(x).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins: still 440 Hz after resampling
    quiet = x[:1000]
    assert 0.5e-4 < float(quiet.std()) < 2e-4  # the dither floor, ≈ −80 dBFS
    (again,) = audio.condition([(tone, rate)], fmt)
    assert torch.equal(x, again)  # seeded dither
    long = audio.centre(torch.arange(10.0), 4)
    assert long.tolist() == [3.0, 4.0, 5.0, 6.0]
    assert audio.centre(torch.ones(3), 6).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def write_folder(root: Path) -> None:
    """12 'low' (200 Hz) and 12 'high' (3 kHz) clips, mixed rates and channels, plus background noise."""
    for i in range(12):
        for label, freq in (("low", 200.0), ("high", 3000.0)):
            (root / label).mkdir(parents=True, exist_ok=True)
            rate = (8000, 22050, 16000)[i % 3]
            wave = sine(freq * (1 + 0.02 * i), rate, 0.3 + 0.03 * i)
            sf.write(root / label / f"{i}.wav", np.stack([wave, wave], 1) if i % 2 else wave, rate)
    (root / "_background_noise_").mkdir()
    sf.write(root / "_background_noise_" / "noise.wav", np.random.default_rng(0).normal(size=8000).astype(np.float32) * 0.1, 8000)


def test_a_folder_of_wavs_with_labels_from_sub_folders(tmp_path):
    write_folder(tmp_path / "sounds")
    d = domain(path=str(tmp_path / "sounds"))
    data = d.load()
    assert data.info["classes"] == ["high", "low"] and data.num_classes == 2
    assert data.train.shape[1:] == (1, 64, 64) and data.train.shape[0] + data.val.shape[0] == 24  # noise skipped
    both = torch.cat([data.train, data.val])[:, 0].mean(dim=2)  # mean over time: [N, mels]
    labels = torch.cat([data.train_labels, data.val_labels])
    assert both[labels == 0].argmax(1).min() > both[labels == 1].argmax(1).max() + 10  # 'high' peaks in higher mels
    ordered = domain(path=str(tmp_path / "sounds"), classes=["low", "high"]).load()
    assert ordered.info["classes"] == ["low", "high"]
    with pytest.raises(UserError, match="no sub-folder 'cat'"):
        domain(path=str(tmp_path / "sounds"), classes=["low", "cat"]).load()
    sf.write(tmp_path / "sounds" / "loose.wav", sine(300, 8000, 0.3), 8000)
    with pytest.raises(UserError, match="loose.wav is not in a label sub-folder"):
        domain(path=str(tmp_path / "sounds")).load()
    (tmp_path / "sounds" / "loose.wav").unlink()
    (tmp_path / "sounds" / "low" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(UserError, match="broken.wav"):
        domain(path=str(tmp_path / "sounds")).load()
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(6):
        sf.write(flat / f"{i}.wav", sine(500 + 50 * i, 16000, 0.5), 16000)
    unlabelled = domain(path=str(flat)).load()
    assert unlabelled.train_labels is None and unlabelled.num_classes == 0
    with pytest.raises(UserError, match="not found"):
        domain(path=str(tmp_path / "nowhere")).load()


def fake_speech_commands():
    """A DatasetDict shaped like Speech Commands: encoded WAV bytes and a class-label column."""
    import datasets

    def wav_bytes(freq: float) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, sine(freq, 16000, 0.6), 16000, format="WAV")
        return buf.getvalue()

    names = ["yes", "zero", "one", "no", "two"] + list(audio.DIGIT_WORDS[3:])
    features = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                  "label": datasets.ClassLabel(names=names)})  # fmt: skip

    def split(labels):
        rows = {"audio": [{"bytes": wav_bytes(200 + 100 * i), "path": None} for i in range(len(labels))], "label": labels}
        return datasets.Dataset.from_dict(rows, features=features)

    return datasets.DatasetDict({"train": split([0, 1, 2, 3, 4, 5, 1, 2, 0]), "validation": split([1, 4, 3, 2])})


def test_speech_commands_code_path(monkeypatch):
    import datasets

    with pytest.raises(UserError, match="data.source=espeak"):  # offline in the tests: a one-line error
        domain(source="hub").load()
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or fake_speech_commands())
    data = domain(source="hub").load()
    assert calls == [("google/speech_commands", "v0.02")]
    # digits only ('yes'/'no' dropped), labelled by digit value; the hub's validation split is the held-out one
    assert data.train_labels.tolist() == [0, 1, 2, 3, 0, 1] and data.val_labels.tolist() == [0, 2, 1]
    assert data.info["classes"] == list(audio.DIGIT_WORDS) and data.train.shape == (6, 1, 64, 64)


# ---- features ----------------------------------------------------------------------------------------


def test_mel_round_trip_of_real_clips_is_within_the_stated_bound(tmp_path):
    require(HAVE_ESPEAK, "espeak-ng")
    folder, entries, _ = espeak.synthesize_digits(espeak.SynthSettings(clips=20, seed=0), tmp_path)
    fmt = audio.ClipFormat()  # 16 kHz, 1 s, as the recipes
    mel = LogMel(MelSettings(fmt.sample_rate, fmt.samples, n_mels=64, frames=64, n_fft=1024))
    clips = audio.condition([audio.read_clip(folder / e["file"]) for e in entries[:10]], fmt)  # "zero" … "nine"
    log_mel = mel(clips)
    assert log_mel.shape == (10, 64, 64)
    waves = mel.invert(log_mel, n_iter=32)
    assert waves.shape == (10, fmt.samples) and torch.isfinite(waves).all()
    again = mel(waves)
    # Stated bound: mel → InverseMelScale → 32 Griffin-Lim iterations → mel comes back within
    # spectral convergence 0.35 per clip and 0.2 on average, in mel magnitude (measured on 40
    # espeak-ng digits: 0.15 on average, 0.31 at worst).
    sc = [spectral_convergence(log_mel[i].exp(), again[i].exp()) for i in range(10)]
    assert max(sc) < 0.35 and sum(sc) / len(sc) < 0.2, sc
    # ... and the measure tells clips apart: neighbouring digits are far outside that bound (≥ 0.8 measured)
    assert min(spectral_convergence(log_mel[i].exp(), log_mel[i + 1].exp()) for i in range(9)) > 0.6


def test_normalization_statistics_are_saved_and_reused(tiny, tmp_path):
    d, data = tiny
    assert abs(float(data.train.square().mean().sqrt()) - 1) < 1e-3  # σ_data ≈ 1 on the training split
    per_mel = data.train.transpose(0, 2).reshape(64, -1)
    assert per_mel.mean(1).abs().max() < 1e-3 and (per_mel.std(1) - 1).abs().max() < 1e-3
    d.save_artifacts(data, tmp_path)
    saved = spec.read_stats(tmp_path / spec.STATS_FILE, 64)
    assert torch.allclose(saved["mean"], d.stats["mean"]) and torch.allclose(saved["std"], d.stats["std"])
    shifted = {"mean": saved["mean"] + 1.0, "std": saved["std"]}
    spec.write_stats(tmp_path / spec.STATS_FILE, shifted, data.dataset)
    reloaded = domain().load(tmp_path)  # a run's own statistics win over refitting
    assert torch.allclose(reloaded.train, data.train - 1.0 / saved["std"][:, None], atol=1e-4)
    record = json.loads((tmp_path / spec.STATS_FILE).read_text())
    record["std"] = record["std"][:10]
    (tmp_path / spec.STATS_FILE).write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"spectrogram_stats.json: field 'std'"):
        spec.read_stats(tmp_path / spec.STATS_FILE, 64)


def test_the_evaluation_classifier_is_accurate_on_held_out_digits(tiny):
    d, data = tiny
    view = spec.classifier_data(data)
    net, info = feats.feature_classifier(spec.classifier_key(data), view.train, view.train_labels, 10, view.val,
                                         view.val_labels, steps=spec.CLASSIFIER_STEPS)  # fmt: skip
    assert info["val_accuracy"] >= 0.9  # it is the evaluator: it must be good
    assert (feats.cache_root() / "classifiers" / f"{spec.classifier_key(data)}.pt").is_file()
    # its features separate real spectrograms from noise of the same mean and spread
    real = frechet_between(feats.features(net, view.val[:50]), feats.features(net, view.val[50:]))
    noise = torch.randn_like(data.val) * data.val.std() + data.val.mean()
    fake = frechet_between(feats.features(net, spec.classifier_view(noise)), feats.features(net, view.val))
    assert fake > 5 * real


# ---- training end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("audio") / "cmp"
    assert main(["train", str(TINY), "--baseline", "edm", "--out", str(out)]) == 0
    return out


def check_wavs(paths: list[Path], rate: int, seconds: float) -> None:
    for p in paths:
        info = sf.info(p)
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (rate, int(rate * seconds), 1, "PCM_16"), p
        wave, _ = sf.read(p)
        assert np.isfinite(wave).all() and np.abs(wave).max() <= 1.0
        assert np.sqrt(np.mean(wave**2)) > 1e-3, f"{p} is silent"


def test_edm_and_infonoise_runs_write_wavs_of_the_stated_rate_and_length(runs):
    recipe = load_recipe_file(TINY)
    rate, seconds, n = recipe["data"]["sample_rate"], recipe["data"]["duration"], recipe["sample"]["n"]
    peaks = {}
    for name in ("infonoise", "edm"):
        run = runs / name / "seed0"
        ev = json.loads((run / "eval.json").read_text())
        assert ev["schedule"] == name and ev["domain"] == "spectrogram" and ev["nelbo_unit"] == "bits/bin"
        assert math.isfinite(ev["nelbo"]) and ev["fd"] > 0 and sum(ev["sample_class_histogram"]) == recipe["eval"]["quality_samples"]
        assert ev["classes"] == list(audio.DIGIT_WORDS) and ev["classifier"]["val_accuracy"] >= 0.9
        assert ev["samples"] == ["samples/final.png", "samples/final.npy", "samples/final"]
        assert ev["headline"]["classes covered"] == sum(c > 0 for c in ev["sample_class_histogram"])
        wavs = sorted((run / "samples" / "final").glob("*.wav"))
        assert len(wavs) == n
        check_wavs(wavs, rate, seconds)
        assert np.load(run / "samples" / "final.npy").shape == (n, 64, 64)
        assert Image.open(run / "samples" / "final.png").size[0] >= 200
        assert (run / spec.STATS_FILE).is_file()
        resolved = load_recipe_file(run / "recipe.yaml")
        assert abs(resolved["diffusion"]["sigma_data"] - 1) < 0.01
        peaks[name] = json.loads((run / "schedule.json").read_text())["pdf"]
    assert peaks["infonoise"] != peaks["edm"]
    md = (runs / "report.md").read_text()
    assert "| infonoise |" in md and "classes covered" in md and "labels of 24 samples: zero" in md


def test_sample_and_eval_commands_on_an_audio_run(runs):
    run = runs / "infonoise" / "seed0"
    assert main(["sample", str(run), "--n", "3", "--steps", "2", "--seed", "4"]) == 0
    wavs = sorted((run / "samples" / "karras-heun2-seed4").glob("*.wav"))
    assert len(wavs) == 3
    check_wavs(wavs, 16000, 1.0)
    first = [sf.read(p)[0] for p in wavs]
    assert main(["sample", str(run), "--n", "3", "--steps", "2", "--seed", "4"]) == 0
    assert all(np.array_equal(a, sf.read(p)[0]) for a, p in zip(first, wavs))  # seeded and deterministic
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text())["nelbo_unit"] == "bits/bin"
