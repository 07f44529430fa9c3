"""The joint domain: pairing and held-out splits, one schedule per modality that sees only its own
errors, exact resume with two learned schedules, conditional sampling that keeps the given
modality fixed, and per-modality schedule files that single-modality runs accept."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import REPO, require
from test_reliability import _same

from multidiff.cli import main
from multidiff.domains.joint import pair_by_label
from multidiff.schedules.base import ScheduleContext
from multidiff.schedules.group import ScheduleGroup
from multidiff.schedules.infonoise import InfoNoise, InfoNoiseParams
from multidiff.schedules.io import load_schedule_file
from multidiff.schedules.registry import build_schedule

RECIPE = REPO / "recipes" / "joint_digits_speech.yaml"


def tiny_joint_args(out, steps=10, extra=(), schedule_settings=True):
    args = ["train", str(RECIPE), "--out", str(out), "--max-steps", str(steps)]
    for item in (
        "data.modalities.audio.data.clips=300", "data.modalities.audio.data.n_mels=16", "data.modalities.audio.data.frames=16",
        "data.modalities.audio.data.griffin_lim_iters=4", "model.width=32", "model.layers=1", "model.heads=2",
        "model.patch.audio=4", "train.batch_size=16", "train.progress_bar=false", "train.eval_every=5", "eval.quality_every=5",
        "train.checkpoint_every=5", "train.log_every=5", "eval.nelbo_examples=16", "eval.nelbo_nodes=4", "eval.quality_samples=24",
        "sample.n=6", "sample.steps=3", "schedule.image.warmup=2", "schedule.image.refresh=2", "schedule.image.bins=16",
        "schedule.image.min_count=2", "schedule.audio.warmup=2", "schedule.audio.refresh=3", "schedule.audio.bins=16",
        "schedule.audio.min_count=2", *extra,
    ):  # fmt: skip
        if schedule_settings or not item.startswith("schedule."):
            args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    import shutil

    require(shutil.which("espeak-ng") is not None, "espeak-ng")
    out = tmp_path_factory.mktemp("joint") / "run"
    assert main(tiny_joint_args(out)) == 0
    return out


# ---- pairing --------------------------------------------------------------------------------------


def test_pairs_share_their_class_and_use_the_smaller_modality_evenly():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 3, 300), rng.integers(0, 3, 40)
    pairs = pair_by_label([a, b], seed=0)
    assert pairs.shape == (300, 2) and np.array_equal(pairs[:, 0], np.arange(300))
    assert np.array_equal(a[pairs[:, 0]], b[pairs[:, 1]])  # every pair is one class
    for c in range(3):
        used = np.bincount(pairs[a == c, 1], minlength=40)[b == c]
        assert used.max() - used.min() <= 1  # each example of the smaller modality used equally often


@pytest.mark.parametrize("lead", ["a", "b"])
def test_redrawn_partners_keep_the_lead_example_and_draw_any_example_of_its_class(lead):
    """data.partners: redrawn — each training step keeps the larger modality's example and draws its
    partner uniformly among the other modality's examples of the same class, from the step's
    generator (so a resumed run draws the same); fixed partners leave the batch as it is."""
    rng = np.random.default_rng(0)
    big, small = rng.integers(0, 3, 300), rng.integers(0, 3, 40)
    labels = {"a": big, "b": small} if lead == "a" else {"a": small, "b": big}
    pairs = pair_by_label([labels["a"], labels["b"]], seed=0)
    batch = torch.from_numpy(pairs)
    fixed = _pair_model(torch.nn.Identity(), 2)
    assert fixed.training_batch(batch, torch.Generator().manual_seed(0)) is batch
    model = _pair_model(torch.nn.Identity(), 2, partner_labels={k: torch.from_numpy(v) for k, v in labels.items()})
    keep, other = (0, 1) if lead == "a" else (1, 0)
    seen = []
    for step in range(50):
        drawn = model.training_batch(batch, torch.Generator().manual_seed(step))
        assert drawn.dtype == batch.dtype and torch.equal(drawn[:, keep], batch[:, keep])
        assert np.array_equal(labels["a"][drawn[:, 0].numpy()], labels["b"][drawn[:, 1].numpy()])  # one class per pair
        seen.append(drawn[:, other].numpy())
    again = model.training_batch(batch, torch.Generator().manual_seed(7))
    assert np.array_equal(again[:, other].numpy(), seen[7])  # the step's generator decides
    seen = np.stack(seen)  # [steps, pairs]
    assert (seen != pairs[None, :, other]).mean() > 0.5  # partners change from the fixed pairing
    small_labels = labels["b" if lead == "a" else "a"]
    counts = np.bincount(seen.ravel(), minlength=40)
    for c in range(3):
        members = np.nonzero(small_labels == c)[0]
        share = counts[members] / counts[members].sum()
        assert (counts[members] > 0).all() and np.allclose(share, 1 / len(members), rtol=0.25)  # uniform within the class


def test_held_out_pairs_come_from_held_out_examples_of_both_modalities(joint_run):
    from multidiff.pipeline import prepare, read_run_recipe

    setup = prepare(read_run_recipe(joint_run), joint_run, metrics=False)
    parts = setup.data.info["parts"]
    n_img, n_aud = parts["image"].train.shape[0], parts["audio"].train.shape[0]
    assert (setup.data.train[:, 0] < n_img).all() and (setup.data.train[:, 1] < n_aud).all()
    assert (setup.data.val[:, 0] >= n_img).all() and (setup.data.val[:, 1] >= n_aud).all()  # rows after the training rows
    tables = setup.data.info["tables"]
    val = setup.data.info["val_pairs"]
    assert torch.equal(tables["image"][setup.data.val[:, 0]], parts["image"].val[val[:, 0]])
    labels = parts["image"].val_labels[val[:, 0]], parts["audio"].val_labels[val[:, 1]]
    assert torch.equal(*labels)


# ---- one schedule per modality ---------------------------------------------------------------------


def test_each_member_schedule_sees_only_its_own_modality_and_masked_entries_are_left_out():
    ctx = ScheduleContext(0.002, 80.0, 1.0, weight=lambda s: s * 0 + 1)
    group = ScheduleGroup({"a": InfoNoise(ctx, InfoNoiseParams(bins=8)), "b": InfoNoise(ctx, InfoNoiseParams(bins=8))})
    sigma = group.sample(6, torch.Generator().manual_seed(0))
    assert sigma.shape == (6, 2)
    error = torch.stack([torch.full((6,), 1.0), torch.full((6,), 5.0)], dim=1)
    mask = torch.ones(6, 2)
    mask[:2, 1] = 0  # two examples had modality b given clean
    group.observe(sigma, error, error, mask)
    a, b = group.members["a"].stats, group.members["b"].stats
    assert float(a.sums.sum()) == 6.0 and float(a.counts.sum()) == 6  # only 1.0s: column a
    assert float(b.sums.sum()) == 20.0 and float(b.counts.sum()) == 4  # only 5.0s, and not the masked ones


def test_members_draw_their_noise_levels_independently():
    """Each modality's σ is drawn independently of the others': no rank correlation between two
    members' columns, and each quadrant of their medians holds about a quarter of the examples
    (comonotonic draws put half in each of two quadrants and none in the others)."""
    from scipy import stats

    ctx = ScheduleContext(0.002, 80.0, 1.0, weight=lambda s: s * 0 + 1)
    group = ScheduleGroup({"a": build_schedule("edm", {}, ctx), "b": build_schedule("loguniform", {}, ctx)})
    g = torch.Generator().manual_seed(0)
    sigma = torch.cat([group.sample(64, g) for _ in range(100)]).double().numpy()
    rho = stats.spearmanr(sigma[:, 0], sigma[:, 1]).statistic
    assert abs(rho) < 0.05
    above = sigma > np.median(sigma, axis=0)
    quadrants = np.array([np.mean((above[:, 0] == i) & (above[:, 1] == j)) for i in (0, 1) for j in (0, 1)])
    assert np.all(np.abs(quadrants - 0.25) < 0.02), quadrants


def test_a_joint_run_learns_one_schedule_per_modality_and_writes_each_modalitys_outputs(joint_run):
    ev = json.loads((joint_run / "eval.json").read_text())
    assert ev["domain"] == "joint" and ev["step"] == 10
    for key in ("fd_image", "fd_audio", "agreement", "cond_image_to_audio", "cond_audio_to_image", "fd_audio_given_image",
                "fd_image_given_audio", "nelbo_image_given_rest", "nelbo_audio_given_rest"):
        assert math.isfinite(ev[key]), key
    assert 0 <= ev["agreement"] <= 1 and set(ev["quality"]) == {"fd_image", "fd_audio", "agreement", "cond_image_to_audio", "cond_audio_to_image"}
    image = load_schedule_file(joint_run / "schedule.image.json")
    audio = load_schedule_file(joint_run / "schedule.audio.json")
    assert image.meta["domain"] == "binary_image" and audio.meta["domain"] == "spectrogram"
    assert image.table.gate["c"] == 0.2 and audio.table.gate["rule"] == "onset"  # each member its own settings
    assert image.table.pdf != audio.table.pdf
    assert (joint_run / "samples" / "image" / "final.png").is_file() and len(list((joint_run / "samples" / "audio" / "final").glob("*.wav"))) == 6
    assert (joint_run / "plots" / "schedule.image.png").is_file() and (joint_run / "plots" / "schedule.audio.png").is_file()


def test_per_modality_schedule_files_train_single_modality_runs(joint_run, tmp_path):
    from conftest import tiny_train_args

    args = tiny_train_args(tmp_path / "digits", steps=2) + ["--schedule", str(joint_run / "schedule.image.json")]
    assert main(args) == 0
    frozen = load_schedule_file(tmp_path / "digits" / "schedule.json").table
    assert frozen.pdf == load_schedule_file(joint_run / "schedule.image.json").table.pdf


def test_joint_training_resumes_exactly_with_two_learned_schedules(joint_run, tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(tiny_joint_args(straight, steps=15)) == 0
    assert main(tiny_joint_args(halves, steps=10)) == 0
    assert main(tiny_joint_args(halves, steps=15) + ["--resume"]) == 0
    a, b = _snapshot_joint(straight), _snapshot_joint(halves)
    _same(a, b)


def _snapshot_joint(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {"weights": ckpt["state_dict"], "schedule": ckpt["multidiff"]["schedule"], "step": ckpt["global_step"],
            "files": {p.name: json.loads(p.read_text())["pdf"] for p in sorted(run.glob("schedule.*.json"))},
            "eval": json.loads((run / "eval.json").read_text())["quality"]}  # fmt: skip


# ---- sampling ---------------------------------------------------------------------------------------------


def test_conditional_sampling_keeps_the_given_modality_fixed(joint_run):
    from multidiff.domains.joint import JointCondition
    from multidiff.evaluation import generate
    from multidiff.pipeline import load_run, sampling_grid

    setup, _ = load_run(joint_run)
    model = setup.model.eval()
    given = setup.data.info["parts"]["image"].val[:5].float()
    x = generate(model, setup.example_shape(), 5, sampling_grid(setup, "karras", 4), condition=JointCondition(model, {"image": given}))
    assert torch.equal(model.split(x)["image"], given)  # exactly the given images
    free = generate(model, setup.example_shape(), 5, sampling_grid(setup, "karras", 4))
    assert not torch.equal(model.split(free)["image"], given)


class _ExactGaussianPair(torch.nn.Module):
    """The exact denoiser of two modalities a, b in R^d, each coordinate pair (a_i, b_i) standard
    normal with correlation ρ, behind EDM preconditioning (σ_data 1): given noisy y and each
    modality's σ it returns the F whose preconditioned output is E[x | y] = Σ(Σ + diag(σ²))⁻¹ y."""

    def __init__(self, rho: float) -> None:
        super().__init__()
        self.rho = rho
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # only so the model has a device

    def forward(self, xs, cn):
        from multidiff.diffusion.precond import edm_coefficients

        sig = {k: (4 * cn[k].double()).exp()[:, None] for k in xs}
        c = {k: edm_coefficients(sig[k], 1.0) for k in xs}
        y = {k: xs[k].double() / c[k][2] for k in xs}
        va, vb = 1 + sig["a"] ** 2, 1 + sig["b"] ** 2
        det = va * vb - self.rho**2
        # Σ (Σ + S)⁻¹ with Σ = [[1, ρ], [ρ, 1]], S = diag(σa², σb²)
        da = ((vb - self.rho**2) * y["a"] + self.rho * (va - 1) * y["b"]) / det
        db = (self.rho * (vb - 1) * y["a"] + (va - self.rho**2) * y["b"]) / det
        den = {"a": da, "b": db}
        return {k: ((den[k] - c[k][0] * y[k]) / c[k][1]).float() for k in xs}


def _pair_model(backbone: torch.nn.Module, d: int, clean_share: float = 0.4, drop_share: float = 0.1, cond_loguniform: float = 0.0,
                partner_labels=None):
    """Two Gaussian modalities a, b of d values each (σ_data 1, σ in [0.002, 80]) around ``backbone``."""
    from multidiff.diffusion.joint import JointDiffusion

    return JointDiffusion(backbone, {"a": (d,), "b": (d,)}, {"a": 1.0, "b": 1.0}, {"a": "gaussian", "b": "gaussian"},
                          {"a": 0.002, "b": 0.002}, {"a": lambda x: x, "b": lambda x: x}, {"a": torch.zeros(1, d), "b": torch.zeros(1, d)},
                          weighting="edm", sigma_min=0.002, sigma_max=80.0, clean_share=clean_share, drop_share=drop_share,
                          cond_loguniform=cond_loguniform, partner_labels=partner_labels)  # fmt: skip


def _gaussian_pair_model(rho: float, d: int):
    return _pair_model(_ExactGaussianPair(rho), d)


class _SigmaRecorder(torch.nn.Module):
    """Returns zeros and remembers the σ each modality's tokens were told (c_noise = ln σ / 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, xs, cn):
        self.seen = {k: (4 * cn[k].double()).exp() for k in xs}
        return {k: torch.zeros_like(v) for k, v in xs.items()}


def test_conditionals_can_train_their_generated_modality_over_the_whole_noise_range():
    """cond_loguniform: of the examples with one modality given clean, that share draws the other's
    σ log-uniformly on [σ_min, σ_max] (trained, hidden from its schedule); the rest keep the σ their
    schedule drew, and joint examples are untouched."""
    n = 20000
    x, noise, drawn = torch.ones(n, 6), torch.randn(n, 6, generator=torch.Generator().manual_seed(1)), torch.full((n, 2), 1.5)  # every schedule drew σ = 1.5

    def run(share: float, clean_share: float):
        m = _pair_model(_SigmaRecorder(), 3, clean_share=clean_share, drop_share=0.0, cond_loguniform=share)
        out = m.loss(x, drawn, noise, None, None, generator=torch.Generator().manual_seed(0))
        return torch.stack([m.net.seen["a"], m.net.seen["b"]], 1), out

    sig, out = run(1.0, 1.0)  # every example conditional, every generated σ log-uniform
    given = (sig - 0.002).abs() < 1e-9  # σ_min exactly, up to float32 rounding of ln σ
    assert bool((given.sum(1) == 1).all())  # one modality given clean per example
    wide = sig[~given].log()
    lo, hi = math.log(0.002), math.log(80.0)
    assert float(wide.min()) >= lo - 1e-6 and float(wide.max()) <= hi + 1e-6
    quartiles = torch.quantile(wide, torch.tensor([0.25, 0.5, 0.75], dtype=wide.dtype))
    assert torch.allclose(quartiles, torch.tensor([lo + (hi - lo) * q for q in (0.25, 0.5, 0.75)], dtype=wide.dtype), atol=0.1)
    assert float(out.mask.sum()) == 0  # no schedule observes an entry it did not draw
    assert bool((out.loss[~given] > 0).all()) and bool((out.loss[given] == 0).all())  # generated trained, given not

    sig, out = run(0.5, 0.4)  # 40 % conditional, half of those spread; the rest keeps the schedule's σ
    given = (sig - 0.002).abs() < 1e-9  # σ_min exactly, up to float32 rounding of ln σ
    cond = given.any(1)
    spread = (sig - 1.5).abs() > 1e-6
    spread_cond = (spread & ~given).any(1)
    assert abs(float(cond.double().mean()) - 0.4) < 0.02
    assert abs(float(spread_cond[cond].double().mean()) - 0.5) < 0.03
    assert not bool(spread[~cond].any())  # joint examples keep their drawn σ and are observed
    assert bool((out.mask[~cond] == 1).all()) and bool((out.mask[spread & ~given] == 0).all())

    base, _ = run(0.0, 0.4)  # off: the schedule's σ everywhere outside the given modality
    assert bool(((base - 1.5).abs() < 1e-6)[~((base - 0.002).abs() < 1e-9)].all())


def test_guided_conditional_sampling_moves_from_the_marginal_through_the_conditional():
    """On two correlated Gaussians with their exact denoiser: guidance w mixes the conditional and
    marginal x0 estimates as D_marg + w (D_cond − D_marg) (both known in closed form), w = 1 samples
    b | a ~ N(ρa, 1 − ρ²), w = 0 the marginal N(0, 1) whatever a is, and w > 1 follows a further."""
    from multidiff.domains.joint import JointCondition
    from multidiff.evaluation import generate
    from multidiff.schedules.grids import sigma_grid

    rho, d, n = 0.8, 4, 2000
    model = _gaussian_pair_model(rho, d)
    a = torch.randn(n, d, generator=torch.Generator().manual_seed(1))

    # the denoiser the sampler sees, against the closed forms
    x0, den = JointCondition(model, {"a": a[:8]}, guidance=3.0).apply(torch.randn(8, 2 * d) * 80.0, model.denoise, 0, 8)
    noisy_b = torch.Generator().manual_seed(2)
    for s in (40.0, 2.0, 0.1):
        z = model.join({"a": a[:8], "b": torch.randn(8, d, generator=noisy_b)})
        out = model.split(den(z, torch.tensor(s)))
        yb = model.split(z)["b"]
        cond = rho * a[:8] + (1 - rho**2) / (1 - rho**2 + s**2) * (yb - rho * a[:8])  # E[b | a, y_b]
        marg = yb / (1 + s**2)  # E[b | y_b]; the marginal call's a is noise at σ 80, which tells ≈ ρ·y_a/6401 (≤ 0.03)
        assert torch.allclose(out["b"], marg + 3.0 * (cond - marg), atol=0.1 if s > 1 else 2e-3), s
        assert (cond - marg).abs().max() > (1.0 if s > 1 else 0.05)  # the two estimates differ by more than that
        assert torch.equal(out["a"], a[:8])

    grid = sigma_grid("karras", 32, 0.002, 80.0, 7.0)

    def slope_and_spread(w: float) -> tuple[float, float]:
        x = generate(model, (2 * d,), n, grid, seed=0, condition=JointCondition(model, {"a": a}, guidance=w))
        b, aa = model.split(x)["b"].double(), model.split(x)["a"].double()
        assert torch.equal(aa, a.double())
        k = float((aa * b).mean() / (aa * aa).mean())
        return k, float((b - k * aa).var())

    (k0, v0), (k1, v1), (k2, _) = (slope_and_spread(w) for w in (0.0, 1.0, 2.0))
    se = 3 / math.sqrt(n * d)  # a few standard errors of a regression slope on unit-variance data
    assert abs(k0) < se and abs(v0 - 1) < 0.1  # the marginal: b ignores a
    assert abs(k1 - rho) < se and abs(v1 - (1 - rho**2)) < 0.05  # the conditional
    assert k2 > rho + 5 * se  # guidance past the conditional


def test_guidance_is_refused_where_it_cannot_apply(joint_run, tmp_path, capsys):
    assert main(["sample", str(joint_run), "--n", "4", "--steps", "3", "--guidance", "2"]) == 2
    assert "add --given" in capsys.readouterr().err
    assert main(["sample", str(joint_run), "--n", "4", "--steps", "3", "--given", "image=heldout", "--guidance", "-1"]) == 2
    assert "must be >= 0" in capsys.readouterr().err
    out = tmp_path / "digits"
    assert main(["train", str(REPO / "recipes" / "binary_digits.yaml"), "--out", str(out), "--set", "sample.guidance=2"]) == 2
    assert "sample.guidance applies to conditional samples" in capsys.readouterr().err
    assert not out.exists()


def test_sample_command_conditions_on_held_out_examples_or_samples_one_modality(joint_run, capsys):
    assert main(["sample", str(joint_run), "--n", "4", "--steps", "3", "--given", "image=heldout"]) == 0
    assert (joint_run / "samples" / "audio" / "karras-heun3-seed0-given-image-guidance2").is_dir()  # the recipe's guidance
    assert main(["sample", str(joint_run), "--n", "4", "--steps", "3", "--given", "image=heldout", "--guidance", "1"]) == 0
    assert (joint_run / "samples" / "audio" / "karras-heun3-seed0-given-image").is_dir()
    assert main(["sample", str(joint_run), "--n", "4", "--steps", "3", "--only", "audio"]) == 0
    assert (joint_run / "samples" / "audio" / "karras-heun3-seed0-only-audio.png").is_file()
    capsys.readouterr()
    assert main(["sample", str(joint_run), "--given", "video=heldout"]) == 2
    assert "unknown modality 'video'" in capsys.readouterr().err
    before = sorted(p.relative_to(joint_run) for p in (joint_run / "samples").rglob("*"))
    assert main(["sample", str(joint_run), "--n", "4", "--given", "image=heldout", "--only", "audio"]) == 2  # not silently dropped
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only audio" in err and "--given" in err
    assert sorted(p.relative_to(joint_run) for p in (joint_run / "samples").rglob("*")) == before


def test_guidance_table_reports_each_direction_per_scale(joint_run, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("guidance_table", REPO / "tools" / "guidance_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    title, lines = tool.guidance_rows(joint_run, [0.0, 2.0], seeds=1)
    assert lines[0].startswith("| guidance | image→audio accuracy | audio→image accuracy |")
    rows = [line.split(" | ") for line in lines[2:]]
    assert [r[0] for r in rows] == ["| 0", "| 2"] and all(len(r) == 5 for r in rows)
    for r in rows:  # accuracies are percentages, distances finite numbers
        assert all(0 <= float(c.rstrip(" %")) <= 100 for c in r[1:3]) and all(math.isfinite(float(c.rstrip(" |"))) for c in r[3:])
    digits = tmp_path / "digits"
    assert main(["train", str(REPO / "recipes" / "binary_digits.yaml"), "--out", str(digits), "--max-steps", "2",
                 "--set", "train.progress_bar=false", "--set", "eval.nelbo_examples=8", "--set", "eval.quality_samples=8",
                 "--set", "eval.quality_seeds=1", "--set", "sample.n=4"]) == 0  # fmt: skip
    capsys.readouterr()
    import sys

    argv, sys.argv = sys.argv, ["guidance_table.py", str(digits)]
    try:
        assert tool.main() == 2
    finally:
        sys.argv = argv
    assert "no conditional samples to guide" in capsys.readouterr().err


def test_schedule_flag_sets_every_modality(tmp_path, capsys):
    import shutil

    require(shutil.which("espeak-ng") is not None, "espeak-ng")
    out = tmp_path / "edm"
    assert main(tiny_joint_args(out, steps=2, schedule_settings=False) + ["--schedule", "edm"]) == 0
    assert {load_schedule_file(p).table.method for p in out.glob("schedule.*.json")} == {"edm"}
    assert main(tiny_joint_args(tmp_path / "bad", steps=2) + ["--set", "schedule.image.name=nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_redrawn_partners_are_refused_for_explicit_pairs(tmp_path, capsys):
    np.savez(tmp_path / "pairs.npz", train=np.zeros((4, 2), dtype=np.int64), val=np.zeros((2, 2), dtype=np.int64))
    out = tmp_path / "run"
    args = ["--set", "data.pair_by=file", "--set", f"data.pairs={tmp_path / 'pairs.npz'}", "--set", "data.partners=redrawn"]
    assert main(tiny_joint_args(out, steps=2) + args) == 2
    err = capsys.readouterr().err
    assert "data.partners: redrawn needs data.pair_by: label" in err and "Traceback" not in err
    assert not out.exists()


def test_a_domain_that_cannot_join_is_refused_when_the_recipe_is_read(tmp_path, capsys):
    """Which domains a joint model composes is what each declares (Domain.joinable), checked before
    any data is read: the text domain encodes token sequences, not a 2-D grid."""
    out = tmp_path / "run"
    assert main(tiny_joint_args(out, steps=2) + ["--set", "data.modalities.audio.domain=text"]) == 2
    err = capsys.readouterr().err
    assert "data.modalities.audio must be {domain: " in err and "Traceback" not in err and err.count("\n") == 1
    assert all(name in err.split("data: {")[0] for name in ("binary_image", "spectrogram", "latent_image"))
    assert "text" not in err.split("data: {")[0]
    assert not out.exists()


def test_compare_to_edm_reports_per_modality_densities_and_metrics(tmp_path):
    import shutil

    from PIL import Image

    require(shutil.which("espeak-ng") is not None, "espeak-ng")
    out = tmp_path / "cmp"
    assert main(tiny_joint_args(out, steps=4) + ["--baseline", "edm"]) == 0
    md = (out / "report.md").read_text()
    for label in ("image Fréchet distance", "audio Fréchet distance", "joint agreement", "image→audio accuracy", "audio→image accuracy"):
        assert label in md, label
    row = next(line for line in md.splitlines() if line.startswith("| infonoise |"))
    assert "image " in row and "audio " in row  # the density peak column names each modality
    width = Image.open(out / "densities.png").size[0]
    assert width > 1.6 * 880  # one panel per modality, side by side
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["agreement"]["lower"] is False  # higher is better: raced upward


def test_the_cross_modal_summary_knows_where_a_modalitys_tokens_are():
    """The path that carries one modality into the other's conditioning must tell apart two images
    with the same patches in different places: a plain mean of patch tokens cannot (it is the
    image's amount of ink, not its digit), which left speech generated from images at chance."""
    from multidiff.nets.joint_transformer import JointTransformer

    torch.manual_seed(0)
    net = JointTransformer({"image": (1, 4, 4), "audio": (1, 4, 4)}, {"image": 2, "audio": 2}, width=16, layers=1, heads=2)
    with torch.no_grad():
        for p in net.parameters():  # any trained state (the zero-initialized projections opened up)
            p.normal_(0, 0.3)
    seen = []
    net.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[1][:, 4:].clone()))  # the audio tokens' conditioning
    audio, sigma = torch.randn(1, 1, 4, 4), {"image": torch.zeros(1), "audio": torch.ones(1)}
    ink_top_left, ink_bottom_right = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    ink_top_left[..., :2, :2] = 1
    ink_bottom_right[..., 2:, 2:] = 1
    for image in (ink_top_left, ink_top_left, ink_bottom_right):
        net({"image": image, "audio": audio}, sigma)
    assert torch.equal(seen[0], seen[1]) and (seen[0] - seen[2]).abs().max() > 0.1
