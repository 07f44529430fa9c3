"""The latent image domain: the autoencoder and its cache, latent normalization, and training
end to end on the tiny recipe (8×8 digits → 2×4×4 latents)."""
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from multidiff.cli import main
from multidiff.data import autoencoders
from multidiff.data.autoencoders import obtain_autoencoder, save_to_run
from multidiff.data.images import load_digits
from multidiff.data.latents import NORM_FILE, LatentNorm
from multidiff.domains.latent_image import LatentImageDomain
from multidiff.errors import UserError
from multidiff.nets.autoencoder import AUTOENCODER_DEFAULTS, ConvAutoencoder, psnr
from multidiff.nets.pretrained_vae import DiffusersVAE
from multidiff.recipe import load_recipe_file, resolve

TINY_RECIPE = REPO / "recipes" / "latent_digits_tiny.yaml"
SMALL_AE = {**AUTOENCODER_DEFAULTS, "latent_channels": 2, "channels": 8, "downsample": 1, "steps": 25, "batch_size": 32}


def digit_images(n: int = 300) -> torch.Tensor:
    return torch.from_numpy(load_digits().train[:n])[:, None]


def tiny_domain(*overrides: str) -> LatentImageDomain:
    return LatentImageDomain(resolve(load_recipe_file(TINY_RECIPE), str(TINY_RECIPE), list(overrides)), Path("/unused"))


# ---- the autoencoder -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, downsample, latent_hw", [((1, 8, 8), 1, 4), ((1, 7, 7), 2, 2), ((1, 14, 14), 2, 4), ((1, 28, 28), 2, 7)])
def test_autoencoder_shapes_round_trip_including_odd_sizes(shape, downsample, latent_hw):
    net = ConvAutoencoder(shape, latent_channels=3, channels=8, downsample=downsample, kind="kl")
    x = torch.rand(5, *shape)
    with torch.no_grad():
        z = net.encode(x)
        y = net.decode(z)
    assert z.shape == (5, 3, latent_hw, latent_hw) == (5, *net.latent_shape)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1


def test_psnr_matches_its_definition():
    x = torch.full((4, 1, 8, 8), 0.5)
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 → 10·log10(100)
    assert psnr(x, x + 0.01) == pytest.approx(40.0, abs=1e-3)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache directory of this test's own, and a count of how often an autoencoder is trained."""
    monkeypatch.setenv("MULTIDIFF_CACHE", str(tmp_path / "cache"))
    calls = []
    real = autoencoders.train_autoencoder

    def counting(images, cfg, log=None):
        calls.append(images.shape[0])
        return real(images, cfg, log=None)

    monkeypatch.setattr(autoencoders, "train_autoencoder", counting)
    return tmp_path / "cache" / "autoencoders", calls


def weights(ae) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in ae.net.parameters()])


def test_autoencoder_cache_is_reused_and_rebuilt_when_data_or_config_change(own_cache, tmp_path):
    cache, calls = own_cache
    imgs = digit_images()
    first = obtain_autoencoder(SMALL_AE, imgs, log=lambda m: None)
    assert calls == [300] and first.info["source"] == "trained" and len(list(cache.glob("*.pt"))) == 1

    again = obtain_autoencoder(dict(SMALL_AE), imgs.clone(), log=lambda m: None)  # nothing changed
    assert calls == [300] and again.info["source"] == "cache" and again.key == first.key
    assert torch.equal(weights(again), weights(first))

    wider = obtain_autoencoder({**SMALL_AE, "latent_channels": 3}, imgs, log=lambda m: None)  # config changed
    assert calls == [300, 300] and wider.key != first.key and wider.net.latent_shape[0] == 3
    longer = obtain_autoencoder({**SMALL_AE, "steps": 26}, imgs, log=lambda m: None)
    assert len(calls) == 3 and longer.key not in (first.key, wider.key)
    obtain_autoencoder({**SMALL_AE, "kl_weight": 0}, imgs, log=lambda m: None)
    assert len(calls) == 4
    obtain_autoencoder({**SMALL_AE, "kl_weight": 0.0}, imgs, log=lambda m: None)  # YAML's 0 and 0.0: one setting
    assert len(calls) == 4

    changed = imgs.clone()
    changed[0, 0, 0, 0] += 0.25  # one pixel of the training data
    other = obtain_autoencoder(SMALL_AE, changed, log=lambda m: None)
    assert len(calls) == 5 and other.key != first.key
    assert len(list(cache.glob("*.pt"))) == 5  # every version stays cached side by side

    (cache / f"{first.key}.pt").write_bytes(b"truncated")  # an unreadable cache entry is retrained
    messages = []
    healed = obtain_autoencoder(SMALL_AE, imgs, log=messages.append)
    assert len(calls) == 6 and healed.key == first.key and any("unreadable" in m for m in messages)
    assert torch.equal(weights(healed), weights(first))  # training is deterministic given the seed

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_to_run(first, run_dir)
    for f in cache.glob("*.pt"):
        f.unlink()
    from_run = obtain_autoencoder(SMALL_AE, imgs, run_dir=run_dir, log=lambda m: None)
    assert len(calls) == 6 and from_run.info["source"] == "run directory"  # the run's own copy, no retraining
    assert torch.equal(weights(from_run), weights(first))


class FakeDiffusersVAE(torch.nn.Module):
    """The slice of diffusers' AutoencoderKL API the wrapper uses: RGB in [−1, 1], 2× average pooling."""

    config = SimpleNamespace(in_channels=3, scaling_factor=0.5)

    def encode(self, x):
        assert x.shape[1] == 3 and float(x.min()) >= -1 and float(x.max()) <= 1
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=F.avg_pool2d(x, 2)))

    def decode(self, z):
        return SimpleNamespace(sample=F.interpolate(z, scale_factor=2.0, mode="nearest"))


def test_pretrained_wrapper_maps_grayscale_0_1_images_to_an_rgb_vae_and_back():
    vae = DiffusersVAE(FakeDiffusersVAE(), image_channels=1)
    images = torch.full((3, 1, 8, 8), 0.25)
    images[:, :, :4] = 1.0  # top half white
    z = vae.encode(images)
    assert z.shape == (3, 3, 4, 4) and torch.allclose(z[:, :, 0], torch.ones(3, 3, 4)) and torch.allclose(z[:, :, -1], torch.full((3, 3, 4), -0.5))
    assert torch.allclose(vae.decode(z), images)  # back to one channel in [0, 1]


def test_a_diffusers_vae_folder_is_used_as_the_autoencoder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    tiny = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=8,
    )  # fmt: skip
    tiny.save_pretrained(tmp_path / "vae")
    cfg = {**AUTOENCODER_DEFAULTS, "pretrained": str(tmp_path / "vae")}
    ae = obtain_autoencoder(cfg, digit_images(20))
    assert ae.info["kind"] == "pretrained" and ae.info["published_scaling_factor"] == pytest.approx(0.18215)
    z = ae.encode(digit_images(20))
    assert z.shape == (20, 4, 4, 4) and ae.decode(z).shape == (20, 1, 8, 8)
    tiny.save_pretrained(tmp_path / "vae")  # rewritten weights: the encoded latents must not be reused
    assert obtain_autoencoder(cfg, digit_images(20)).key != ae.key


# ---- latent normalization --------------------------------------------------------------------------


def test_measured_normalization_gives_unit_variance_on_the_training_split():
    g = torch.Generator().manual_seed(0)
    means, stds = torch.tensor([3.0, -1.0, 0.0]), torch.tensor([0.5, 4.0, 1.5])
    z = means[None, :, None, None] + stds[None, :, None, None] * torch.randn(2000, 3, 2, 2, generator=g)

    norm = LatentNorm.fit(z, "channel")
    x = norm.apply(z).double()
    per_channel = x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(per_channel.std(1, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert np.allclose(norm.shift, means, atol=0.1) and np.allclose(norm.scale, stds, rtol=0.05)
    assert torch.allclose(norm.invert(norm.apply(z)), z, atol=1e-5)

    glob = LatentNorm.fit(z, "global")  # one scale, no shift: unit std overall, channel ratios kept
    y = glob.apply(z).double()
    assert float(y.std(correction=0)) == pytest.approx(1.0, abs=1e-6) and glob.shift == [0.0] * 3
    ratio = y[:, 1].std() / y[:, 0].std()
    assert float(ratio) == pytest.approx(float(z[:, 1].std() / z[:, 0].std()), rel=1e-5)
    assert torch.equal(LatentNorm.fit(z, "none").apply(z), z)
    with pytest.raises(UserError, match="constant"):
        LatentNorm.fit(torch.ones(10, 2, 2, 2), "channel")


def test_domain_normalizes_latents_and_reads_its_statistics_back_from_the_run(tmp_path):
    domain = tiny_domain()
    data = domain.load()
    c = data.train.shape[1]
    assert data.train.shape[1:] == (2, 4, 4) and data.val.shape[1:] == (2, 4, 4)
    per_channel = data.train.double().transpose(0, 1).reshape(c, -1)
    assert torch.allclose(per_channel.std(1, correction=0), torch.ones(c, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(per_channel.mean(1), torch.zeros(c, dtype=torch.float64), atol=1e-4)
    assert domain.measure_sigma_data(data) == pytest.approx(1.0, abs=1e-4)  # σ_data from the normalized latents
    val_std = data.val.transpose(0, 1).reshape(c, -1).std(1)
    assert bool(((val_std > 0.7) & (val_std < 1.3)).all())  # held-out latents: close to, not exactly, unit
    # the autoencoder reconstructs clearly better than predicting the mean image
    info = data.info["autoencoder_info"]
    images = data.info["images"]
    mean_image = images.train.mean(0, keepdim=True).expand_as(images.val)
    assert info["psnr_val"] > psnr(images.val, mean_image) + 6

    run_dir = tmp_path / "run"
    (run_dir / "plots").mkdir(parents=True)
    domain.save_artifacts(data, run_dir)
    saved = json.loads((run_dir / NORM_FILE).read_text())
    assert saved["mode"] == "channel" and len(saved["scale"]) == c and (run_dir / "autoencoder.pt").is_file()
    assert (run_dir / "plots" / "autoencoder.png").is_file()
    saved["scale"] = [2 * s for s in saved["scale"]]  # the run's statistics win over a fresh fit
    (run_dir / NORM_FILE).write_text(json.dumps(saved))
    reloaded = domain.load(run_dir)
    assert torch.allclose(reloaded.train, data.train / 2, atol=1e-5)
    (run_dir / NORM_FILE).write_text(json.dumps({**saved, "shift": [0.0]}))
    with pytest.raises(UserError, match=r"latent_norm.json: field 'shift'"):
        domain.load(run_dir)


# ---- end to end --------------------------------------------------------------------------------------


def tiny_latent_args(out: Path, steps: int) -> list[str]:
    args = ["train", str(TINY_RECIPE), "--out", str(out), "--max-steps", str(steps)]
    for item in ("train.progress_bar=false", "train.eval_every=3", "train.checkpoint_every=3", "train.log_every=2",
                 "eval.nelbo_examples=32", "eval.nelbo_nodes=8", "eval.quality_samples=64", "sample.n=16", "sample.steps=4",
                 "train.batch_size=32", "schedule.warmup=2", "schedule.refresh=2", "schedule.bins=16", "schedule.min_count=2"):  # fmt: skip
        args += ["--set", item]
    return args


def test_edm_and_infonoise_train_on_latents_and_decode_to_images(tmp_path):
    out = tmp_path / "cmp"
    assert main(tiny_latent_args(out, steps=6) + ["--baseline", "edm"]) == 0
    keys = set()
    for label in ("infonoise", "edm"):
        run = out / label / "seed0"
        ev = json.loads((run / "eval.json").read_text())
        assert ev["schedule"] == label and ev["step"] == 6 and ev["nelbo_unit"] == "bits/latent dim"
        assert math.isfinite(ev["nelbo"]) and ev["fd"] > 0 and sum(ev["sample_class_histogram"]) == 64
        ae = ev["autoencoder"]
        assert ae["latent_shape"] == [2, 4, 4] and ae["psnr_val"] > 15 and ae["fd_reconstructions"] >= 0
        keys.add(ae["key"])
        samples = np.load(run / "samples" / "final.npy")
        assert samples.shape == (16, 1, 8, 8) and samples.dtype == np.float32  # decoded: the images' shape
        assert samples.min() >= 0 and samples.max() <= 1 and samples.std() > 0.01  # and their value range
        for rel in ("samples/final.png", "plots/autoencoder.png", "autoencoder.pt", NORM_FILE, "schedule.json"):
            assert (run / rel).is_file(), rel
        recipe = (run / "recipe.yaml").read_text()
        assert "latent_channels: 2" in recipe and "normalize: channel" in recipe  # resolved, nested section included
    assert len(keys) == 1  # both runs diffuse the same latents
    md = (out / "report.md").read_text()
    assert "| infonoise |" in md and "| edm |" in md and "PSNR" in md

    assert main(["sample", str(out / "edm" / "seed0"), "--n", "5", "--steps", "3", "--seed", "2"]) == 0
    more = np.load(out / "edm" / "seed0" / "samples" / "karras-heun3-seed2.npy")
    assert more.shape == (5, 1, 8, 8) and 0 <= more.min() and more.max() <= 1


def one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("multidiff: error:"), err
    return err[0]


def test_bad_latent_settings_are_one_line_errors(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "x")
    base = ["train", str(TINY_RECIPE), "--out", out]
    msg = one_line_error(capsys, main(base + ["--set", "data.autoencoder.latent_chanels=3"]))
    assert "data.autoencoder.latent_chanels" in msg
    msg = one_line_error(capsys, main(base + ["--set", "data.autoencoder.kind=vq"]))
    assert "data.autoencoder.kind" in msg
    msg = one_line_error(capsys, main(base + ["--set", "data.normalize=scale"]))
    assert "data.normalize" in msg
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if diffusers were not installed
    msg = one_line_error(capsys, main(base + ["--set", "data.autoencoder.pretrained=stabilityai/sd-vae-ft-mse"]))
    assert "diffusers" in msg and "pip install" in msg  # the pretrained path says what to install
    assert not (tmp_path / "x").exists()


def test_latent_fashion_recipe_is_valid_and_maps_28x28_images_to_4x7x7_latents():
    path = REPO / "recipes" / "latent_fashion.yaml"
    domain = LatentImageDomain(resolve(load_recipe_file(path), str(path)), Path("/unused"))
    cfg = domain.data_cfg
    assert cfg["source"] == "fashion_mnist" and cfg["autoencoder"]["pretrained"] is None
    from multidiff.nets.autoencoder import autoencoder_from_config

    assert autoencoder_from_config(cfg["autoencoder"], (1, 28, 28)).latent_shape == (4, 7, 7)
