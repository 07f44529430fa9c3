"""The text domain through the command line: the tiny pydoc recipe trained with InfoNoise and the
EDM baseline, schedules exported, samples as text, a saved tokenizer reused by sample and eval."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from multidiff.cli import main
from multidiff.data.text_tokenizers import BPETokenizer, load_tokenizer
from multidiff.diffusion.categorical import CategoricalDiffusion
from multidiff.nets.transformer import SequenceTransformer
from multidiff.schedules.io import load_schedule_file


def tiny_text_args(out: Path, steps: int = 10, extra: tuple[str, ...] = ()) -> list[str]:
    """The pydoc recipe shrunk to seconds: 100 k characters, BPE-300, L = 16, one narrow layer."""
    args = ["train", str(REPO / "recipes" / "text_pydoc.yaml"), "--out", str(out), "--max-steps", str(steps)]
    for item in (
        "data.max_chars=100000", "data.vocab_size=300", "data.seq_len=16", "model.embed_dim=16", "model.width=32",
        "model.layers=1", "train.batch_size=8", "train.progress_bar=false", "train.eval_every=5",
        "train.checkpoint_every=5", "train.log_every=5", "eval.nelbo_examples=8", "eval.nelbo_nodes=4",
        "eval.quality_samples=16", "sample.n=4", "sample.steps=4", "schedule.warmup=4", "schedule.refresh=2",
        "schedule.bins=16", "schedule.min_count=2", *extra,
    ):  # fmt: skip
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "cmp"
    assert main(tiny_text_args(out) + ["--baseline", "edm"]) == 0
    return out


@pytest.mark.parametrize("schedule", ["infonoise", "edm"])
def test_both_schedules_train_and_export(runs, schedule, tmp_path):
    run = runs / schedule / "seed0"
    for rel in ["recipe.yaml", "tokenizer.json", "schedule.json", "eval.json", "checkpoints/last.ckpt", "samples/final.txt", "samples/final.npy", "plots/curves.png"]:
        assert (run / rel).is_file(), rel
    table = load_schedule_file(run / "schedule.json").table
    assert table.method == schedule and table.step == 10 and (table.sigma_min, table.sigma_max) == (1.0, 300.0)
    assert main(["schedule", "export", str(run), "-o", str(tmp_path / f"{schedule}.json")]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["domain"] == "text" and ev["nelbo_unit"] == "bits/token" and ev["dataset"] == "pydoc/bpe300/L16"
    # the two units describe the same bound: bits/token × tokens = bits/char × characters
    per = ev["nelbo_units_per_example"]
    assert per["bits/token"] == 16 and per["bits/char"] > 16
    assert ev["nelbo"] * 16 == pytest.approx(ev["nelbo_bits_per_char"] * per["bits/char"])
    assert ev["ngram_nll"] > 0 and ev["ngram_nll_data"] > 0 and 0 <= ev["entropy_ratio"] and ev["metric_samples"] == 16
    assert len(ev["preview"]) == 3 and set(ev["headline"]) == {"NELBO bits/char", "sample n-gram NLL (bits/token)", "sample/data unigram entropy"}
    text = (run / "samples" / "final.txt").read_text()
    assert text.count("--- sample ") == 4 and ev["preview"][0] in text
    ids = np.load(run / "samples" / "final.npy")
    assert ids.shape == (4, 16) and ids.max() < 300
    assert load_tokenizer(run / "tokenizer.json").decode(ids[0]) == ev["preview"][0]
    with (run / "metrics.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/nelbo_bits_per_char")]
    assert [int(r["step"]) + 1 for r in rows] == [5]  # the final step's value is the final evaluation's
    from multidiff.report.curves import metric_curves

    assert metric_curves(run)["nelbo"][0] == [5, 10]


def test_comparison_shows_text_metrics_and_samples(runs):
    md = (runs / "report.md").read_text()
    assert "| infonoise |" in md and "| edm |" in md and "NELBO bits/char" in md and "## Samples" in md
    assert "[final.txt](infonoise/seed0/samples/final.txt)" in md
    assert "sample n-gram NLL (bits/token)" in md and "diagnostic" in md  # the entropy ratio gets no speedup


def test_sample_and_eval_reuse_the_saved_tokenizer(runs, monkeypatch):
    def refit(*args, **kwargs):
        raise AssertionError("the tokenizer was fitted again instead of read from the run")

    monkeypatch.setattr(BPETokenizer, "fit", classmethod(refit))
    run = runs / "infonoise" / "seed0"
    before = json.loads((run / "eval.json").read_text())
    assert main(["sample", str(run), "--n", "3", "--steps", "5", "--sigmas", "learned", "--seed", "2"]) == 0
    assert (run / "samples" / "learned-euler5-seed2.txt").read_text().count("--- sample ") == 3
    assert main(["eval", str(run)]) == 0
    after = json.loads((run / "eval.json").read_text())
    assert after["nelbo"] == pytest.approx(before["nelbo"], rel=1e-5) and after["preview"] == before["preview"]


def test_self_conditioning_feeds_a_first_pass_back_in():
    torch.manual_seed(0)
    net = SequenceTransformer(11, 6, embed_dim=4, width=16, layers=1, heads=2, self_condition=True)
    calls = []
    net.register_forward_hook(lambda mod, args, out: calls.append(args[2] if len(args) > 2 else None))
    model = CategoricalDiffusion(net, 11, 4, 1.0, self_condition=True)
    x, sigma = torch.randn(3, 6, 4), torch.tensor([1.0, 5.0, 50.0])
    assert torch.equal(model.denoise(x, sigma), model.denoise(x, sigma))  # a function of (x, σ)
    assert calls[0] is None and calls[1] is not None  # first pass without, second with the estimate
    tokens = torch.randint(0, 11, (3, 6))
    noise = torch.tensor([1.0, -1.0, 1.0])[:, None, None] * torch.rand(3, 6, 4)
    calls.clear()
    out = model.loss(model.encode(tokens), sigma, noise, lambda s: s * 0 + 1, tokens)
    out.loss.mean().backward()
    used = calls[1].abs().flatten(1).sum(1)
    assert used[0] > 0 and used[1] == 0 and used[2] > 0  # the examples with positive noise sign get it
    assert model.embedding.weight.grad is not None


def test_resume_reads_the_tokenizer_back(tmp_path, monkeypatch):
    out = tmp_path / "r"
    assert main(tiny_text_args(out, steps=5, extra=("train.checkpoint_every=5",))) == 0
    saved = (out / "tokenizer.json").read_text()
    monkeypatch.setattr(BPETokenizer, "fit", classmethod(lambda *a, **k: pytest.fail("refitted on resume")))
    assert main(tiny_text_args(out, steps=10, extra=("train.checkpoint_every=5",)) + ["--resume"]) == 0
    assert (out / "tokenizer.json").read_text() == saved
    assert json.loads((out / "eval.json").read_text())["step"] == 10
