"""The text domain's parts against independent truths: tokenizers round-trip, the split holds out
whole blocks, score interpolation is exact for a confident head, the bound of the exact denoiser is
the entropy, bits/char come from the real characters, and the n-gram reference is a distribution."""
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require
from torch import nn

from multidiff.data import text as sources
from multidiff.data.text_tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from multidiff.diffusion.categorical import CategoricalDiffusion
from multidiff.diffusion.likelihood import fixed_noise, nelbo_nats
from multidiff.domains.text import TextDomain
from multidiff.errors import UserError
from multidiff.metrics.ngram import KneserNey
from multidiff.metrics.text import text_sample_metrics, unigram_entropy
from multidiff.nets.transformer import SequenceTransformer

ODD_TEXT = "naïve café — 日本語, emoji 🎉\n\ttabs  and  double spaces\r\nend"


def text_domain(**data) -> TextDomain:
    model = {"embed_dim": 8, "width": 16, "layers": 1, "heads": 2}
    return TextDomain({"data": data, "model": model, "seed": 0}, Path("/nonexistent"))


# ---- tokenizers ----------------------------------------------------------------------------------


def test_bpe_round_trips_any_text_and_reloads_identically(tmp_path):
    corpus = sources.load_pydoc().train[:60000]
    tok = BPETokenizer.fit([corpus], vocab_size=400)
    assert tok.vocab_size == 400
    for text in (corpus, ODD_TEXT, ""):
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode(corpus)
    assert len(ids) < len(corpus) / 1.5  # merges were learned: well under one token per character
    tok.save(tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert np.array_equal(again.encode(corpus), ids) and again.vocab_size == 400


def test_char_tokenizer_round_trips_and_marks_unseen_characters(tmp_path):
    tok = CharTokenizer.fit(["hello world\n", "abc"])
    assert tok.vocab_size == 1 + len(set("hello world\nabc"))
    assert tok.decode(tok.encode("cab hello\n")) == "cab hello\n"
    ids = tok.encode("hé")
    assert ids.tolist()[1] == 0 and tok.decode(ids) == "h\ufffd"  # unseen → the unknown id
    tok.save(tmp_path / "c.json")
    assert load_tokenizer(tmp_path / "c.json").chars == tok.chars
    # an existing tokenizer file is used as given, not refitted
    given = text_domain(source="pydoc", tokenizer=str(tmp_path / "c.json"), seq_len=8, max_chars=5000).load()
    assert given.tokenizer.chars == tok.chars and given.dataset == "pydoc/char13/L8"  # 12 characters + unknown


def test_bad_tokenizer_files_name_the_file(tmp_path):
    with pytest.raises(UserError, match="missing.json not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(UserError, match="junk.json is not a JSON tokenizer"):
        load_tokenizer(tmp_path / "junk.json")
    (tmp_path / "odd.json").write_text('{"format": "multidiff.char_tokenizer", "chars": ["ab"]}')
    with pytest.raises(UserError, match="odd.json: field 'chars'"):
        load_tokenizer(tmp_path / "odd.json")


# ---- sources, split and chunks ----------------------------------------------------------------------


def numbered_corpus(path: Path, lines: int = 3000) -> Path:
    path.write_text("".join(f"{i:05d} the quick brown fox\n" for i in range(lines)))
    return path


def line_ids(texts) -> set[int]:
    return {int(m) for t in texts for m in re.findall(r"(?<!\d)(\d{5}) the", t)}


def test_held_out_lines_are_never_trained_on_nor_seen_by_the_tokenizer(tmp_path, monkeypatch):
    path = numbered_corpus(tmp_path / "lines.txt")
    fitted_on = []
    original = BPETokenizer.fit.__func__
    monkeypatch.setattr(BPETokenizer, "fit", classmethod(lambda cls, texts, v: fitted_on.extend(texts) or original(cls, texts, v)))
    dom = text_domain(path=str(path), tokenizer="bpe", vocab_size=300, seq_len=16, split_blocks=40, val_fraction=0.1)
    data = dom.load()
    train_ids, val_ids = line_ids(dom.texts(data.train)), line_ids(dom.texts(data.val))
    assert not train_ids & val_ids  # no line is in both splits
    assert not line_ids(fitted_on) & val_ids  # the tokenizer never saw held-out text
    assert 0.05 < len(val_ids) / len(train_ids | val_ids) < 0.15
    assert data.train.dtype == torch.int32 and data.train.shape[1] == 16


def test_chunks_are_contiguous_disjoint_and_cover_the_corpus(tmp_path):
    path = numbered_corpus(tmp_path / "lines.txt")
    text, width = path.read_text(), len("00000 the quick brown fox\n")
    dom = text_domain(path=str(path), tokenizer="char", seq_len=64, split_blocks=40, val_fraction=0.1)
    data = dom.load()
    spans = {}
    for split, chunks in (("train", data.train), ("val", data.val)):
        spans[split] = []
        for t in dom.texts(chunks):  # locate each chunk in the corpus by the first line number it shows
            m = re.search(r"(?<!\d)(\d{5}) the", t)
            start = int(m.group(1)) * width - m.start()
            assert text[start : start + 64] == t  # a contiguous piece of the corpus
            spans[split].append(start)
    covered = np.zeros(len(text), int)
    for split, starts in spans.items():
        for s in starts:
            covered[s : s + 64] += 1 if split == "train" else 100
    assert set(np.unique(covered)) <= {0, 1, 100}  # no character twice, none in both splits
    assert (covered == 0).sum() < 40 * 64  # only each block's remainder (< L characters) is unused
    assert 0.07 < (covered == 100).mean() < 0.13


def test_split_blocks_partition_the_text_at_line_breaks():
    text = "".join(f"line {i}\n" for i in range(1000))
    blocks = sources.split_blocks(text, 37)
    assert "".join(blocks) == text and len(blocks) == 37
    assert all(b.endswith("\n") for b in blocks)
    held = sources.held_out_blocks(37, 0.1, seed=0)
    assert len(held) == 4 and np.array_equal(held, sources.held_out_blocks(37, 0.1, seed=0))
    assert sources.chunk(np.arange(10), 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_the_split_does_not_depend_on_the_training_seed(tmp_path):
    path = numbered_corpus(tmp_path / "lines.txt", 500)
    a = text_domain(path=str(path), tokenizer="char", seq_len=16, split_blocks=10).load()
    other = TextDomain({"data": {"path": str(path), "tokenizer": "char", "seq_len": 16, "split_blocks": 10}, "model": {}, "seed": 7}, Path("/x"))
    b = other.load()
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)


def test_kjv_from_debian_has_no_verse_numbers():
    require(shutil.which("bible") is not None, "bible-kjv")
    corpus = sources.load_bible()
    assert corpus.train.startswith("In the beginning God created the heaven and the earth.\n")
    assert corpus.train.rstrip().endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert 4_000_000 < len(corpus.train) < 4_500_000
    assert not re.search(r"^\S*\d+:\d+", corpus.train, re.MULTILINE)


def test_missing_sources_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install bible-kjv.*data.path"):
        text_domain(source="kjv").load()
    with pytest.raises(UserError, match="nope.txt not found"):
        text_domain(path=str(tmp_path / "nope.txt")).load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .txt files"):
        text_domain(path=str(tmp_path / "empty")).load()
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt is not UTF-8"):
        text_domain(path=str(tmp_path / "latin1.txt")).load()
    (tmp_path / "short.txt").write_text("too short\n" * 3)
    with pytest.raises(UserError, match="seq_len"):
        text_domain(path=str(tmp_path / "short.txt"), tokenizer="char", seq_len=64, split_blocks=2).load()
    with pytest.raises(UserError, match="data.tokenizer"):
        text_domain(source="pydoc", tokenizer="words").load()
    with pytest.raises(UserError, match="ngram_order=9 is too high"):
        text_domain(source="pydoc", tokenizer="bpe", vocab_size=512, ngram_order=9, max_chars=20000).load()


def test_hub_corpora_use_their_own_validation_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    fake = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["abc def " * 200, "ghi " * 100]}),
        "validation": datasets.Dataset.from_dict({"text": ["zzz abc " * 50]}),
    })  # fmt: skip
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: seen.append(name) or fake)
    dom = text_domain(source="hub", path="someone/corpus", tokenizer="char", seq_len=8, split_blocks=4)
    data = dom.load()
    assert seen == ["someone/corpus"] and data.dataset == "someone/corpus/char12/L8"  # a–i, space, newline + unknown
    # the held-out text is the validation split; the tokenizer never saw its 'z' (decoded as unknown)
    assert set("".join(dom.texts(data.val))) == set("abc \ufffd") and "z" not in data.tokenizer.chars
    with pytest.raises(UserError, match="text_field.*'body'"):
        text_domain(source="hub", path="someone/corpus", text_field="body").load()


@pytest.mark.parametrize("recipe", ["text_kjv.yaml", "text_pydoc.yaml", "text8.yaml"])
def test_text_recipes_resolve(recipe):
    from conftest import REPO

    from multidiff.recipe import load_recipe_file, resolve

    r = resolve(load_recipe_file(REPO / "recipes" / recipe), recipe)
    dom = TextDomain(r, Path("/nonexistent"))  # validates the data and model sections
    assert r["domain"] == "text" and r["diffusion"]["weighting"] == "uniform" and dom.data_cfg["seq_len"] >= 16


# ---- score interpolation ------------------------------------------------------------------------------


class Oracle(nn.Module):
    """A logits head that states given tokens with confidence ``scale`` (ignores its input)."""

    def __init__(self, tokens: torch.Tensor, vocab: int, scale: float = 1e4) -> None:
        super().__init__()
        self.tokens, self.vocab, self.scale = tokens, vocab, scale

    def forward(self, x, c_noise, cond=None):
        return self.scale * nn.functional.one_hot(self.tokens, self.vocab).float()


def model_with(backbone: nn.Module, vocab: int = 6, dim: int = 5, sigma_data: float = 1.0) -> CategoricalDiffusion:
    torch.manual_seed(0)
    return CategoricalDiffusion(backbone, vocab, dim, sigma_data)


def test_embeddings_have_per_dimension_rms_sigma_data():
    m = model_with(nn.Identity(), vocab=50, dim=12, sigma_data=0.7)
    x = m.encode(torch.randint(0, 50, (4, 9)))
    assert torch.allclose(x.square().mean(-1), torch.full((4, 9), 0.49), atol=1e-5)
    assert torch.equal(m.decode(x), m.decode(m.encode(m.decode(x))))


def test_confident_right_head_gives_the_true_embedding_and_zero_error():
    tokens = torch.randint(0, 6, (3, 7), generator=torch.Generator().manual_seed(1))
    m = model_with(Oracle(tokens, 6))
    x = m.encode(tokens)
    sigma = torch.tensor([1.0, 10.0, 300.0])
    noise = torch.randn_like(x)
    assert torch.allclose(m.denoise(x + sigma[:, None, None] * noise, sigma), x, atol=1e-5)
    out = m.loss(x, sigma, noise, lambda s: torch.ones_like(s), tokens)
    assert torch.allclose(out.error, torch.zeros(3), atol=1e-10) and not out.error.requires_grad
    assert float(out.loss.max()) < 1e-6  # cross-entropy of a confident right answer
    assert torch.equal(m.decode(m.denoise(x, sigma)), tokens)


def test_expected_embedding_error_is_positive_exactly_when_the_prediction_is_wrong():
    tokens = torch.zeros(2, 4, dtype=torch.long)
    wrong = tokens.clone()
    wrong[1, 2] = 3  # one wrong position in example 1
    m = model_with(Oracle(wrong, 6))
    x = m.encode(tokens)
    out = m.loss(x, torch.tensor([2.0, 2.0]), torch.randn_like(x), lambda s: torch.ones_like(s), tokens)
    e = m.embeddings().detach()
    expected = float((e[3] - e[0]).square().sum() / (4 * 5))  # one position's squared distance, per dimension of L·D
    assert float(out.error[0]) == pytest.approx(0, abs=1e-10)
    assert float(out.error[1]) == pytest.approx(expected, rel=1e-5) and expected > 0
    # an unsure head (uniform logits) predicts the mean embedding: positive error everywhere
    unsure = model_with(Oracle(tokens, 6, scale=0.0))
    assert bool((unsure.loss(x, torch.tensor([2.0, 2.0]), torch.randn_like(x), lambda s: s * 0 + 1, tokens).error > 0).all())


# ---- the bound --------------------------------------------------------------------------------------


class BayesDenoiser(nn.Module):
    """Exact posterior logits for i.i.d. tokens with prior p: ln p_k − ‖z − e_k‖²/2σ² (from c_in·z, c_noise)."""

    def __init__(self, prior: torch.Tensor, sigma_data: float) -> None:
        super().__init__()
        self.log_prior, self.sigma_data = prior.log(), sigma_data
        self.embeddings = None  # set to the model's embedding function

    def forward(self, x_in, c_noise, cond=None):
        sigma = torch.exp(4 * c_noise)[:, None, None]
        z = x_in * (sigma**2 + self.sigma_data**2).sqrt()
        e = self.embeddings()
        return self.log_prior - ((z[..., None, :] - e) ** 2).sum(-1) / (2 * sigma**2)


def nelbo_bits(model, tokens, lo=0.2, hi=100.0, nodes=48):
    x = model.encode(tokens)
    noise = fixed_noise(torch.arange(tokens.shape[0]), tuple(x.shape[1:]), nodes + 1, seed=3)
    with torch.no_grad():
        parts = nelbo_nats(model.denoise, x, noise, sigma_min=lo, sigma_max=hi, recon_nll=model.recon_nll)
    return float(parts["total"].mean()) / (math.log(2) * tokens.shape[1]), parts


def test_bound_of_a_model_that_knows_the_data_is_its_entropy_and_beats_an_untrained_one():
    prior = torch.tensor([0.7, 0.1, 0.1, 0.1])
    entropy = float(-(prior * prior.log2()).sum())  # 1.357 bits/token
    tokens = torch.multinomial(prior, 400 * 8, replacement=True, generator=torch.Generator().manual_seed(0)).view(400, 8)
    knows = model_with(BayesDenoiser(prior, 1.0), vocab=4, dim=8)
    knows.embedding.weight.data = torch.eye(4, 8)  # orthogonal embeddings
    knows.net.embeddings = knows.embeddings
    bits, parts = nelbo_bits(knows, tokens)
    assert bits == pytest.approx(entropy, abs=0.06)
    assert float(parts["recon"].mean()) < 1e-3  # at σ = 0.2 the tokens are certain
    # the exact denoiser for a uniform prior bounds the cross-entropy against uniform: log2(4) = 2 bits
    uniform = model_with(BayesDenoiser(torch.full((4,), 0.25), 1.0), vocab=4, dim=8)
    uniform.embedding.weight.data = torch.eye(4, 8)
    uniform.net.embeddings = uniform.embeddings
    assert nelbo_bits(uniform, tokens)[0] == pytest.approx(2.0, abs=0.06)
    untrained = model_with(SequenceTransformer(4, 8, embed_dim=8, width=16, layers=1, heads=2), vocab=4, dim=8)
    untrained.embedding.weight.data = torch.eye(4, 8)
    assert nelbo_bits(untrained, tokens)[0] > entropy + 0.4


def test_bits_per_char_use_the_true_characters_of_the_evaluated_chunks():
    corpus = sources.load_pydoc().train
    dom = text_domain(source="pydoc", tokenizer="bpe", vocab_size=600, seq_len=32, max_chars=150_000)
    data = dom.load()
    units = dom.nelbo_units(data, 20)
    texts = dom.texts(data.val[:20])
    assert all(t in corpus for t in texts)  # each chunk is held-out text, decoded exactly
    assert units["bits/token"] == 32 and units["bits/char"] == pytest.approx(sum(map(len, texts)) / 20)
    assert units["bits/char"] > 2 * 32  # BPE merges: several characters per token
    chars = text_domain(source="pydoc", tokenizer="char", seq_len=32, max_chars=50_000)
    assert chars.nelbo_units(chars.load(), 20)["bits/char"] == 32  # one character per token


# ---- the n-gram reference and sample metrics ----------------------------------------------------------


def test_kneser_ney_is_a_distribution_and_prefers_real_text():
    rng = np.random.default_rng(0)
    train = np.tile(np.array([0, 1, 2, 3, 1, 2, 4]), 200)
    lm = KneserNey([train], vocab_size=6, order=3)
    for history in ([1, 2], [5, 5], [2, 3]):  # seen, never seen, seen
        probs = [2 ** lm.log2_prob(np.array(history + [w]))[0] for w in range(6)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-9) and min(probs) > 0
    real = lm.bits_per_token([train[:50]])
    shuffled = lm.bits_per_token([rng.permutation(train[:50])])
    assert real < 0.4 and shuffled > 2  # after (1, 2) comes 3 or 4: about 2/7 bit per token


def test_sample_metrics_flag_repetitive_samples():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 50, (300, 16))
    varied = text_sample_metrics(rng.integers(0, 50, (40, 16)), data[:200], data[200:], 50, 2)
    stuck = text_sample_metrics(np.full((40, 16), 7), data[:200], data[200:], 50, 2)
    assert varied["entropy_ratio"] == pytest.approx(1.0, abs=0.05)
    assert stuck["entropy_ratio"] == 0.0 and unigram_entropy(np.arange(8), 8) == pytest.approx(3.0)
