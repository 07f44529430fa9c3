"""The README's promises that can be checked by running them: its Python snippet works when pasted,
its two set-up commands are the ones CI runs, and every file it links exists."""
import os
import re

import numpy as np
import pytest
import torch
from conftest import REPO

from multidiff.schedules.registry import REGISTRY

README = (REPO / "README.md").read_text()


def test_the_python_snippet_runs_when_pasted_and_learns_the_gaussian_mmse(tmp_path, monkeypatch):
    """The snippet's loop is an exact Gaussian denoiser on Gaussian data of RMS 0.5, so what the
    learned profile estimates has a closed form: mmse(σ) = σ_d² σ² / (σ_d² + σ²) per dimension."""
    block = re.search(r"## Use a schedule in your own training loop.*?```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README snippet", "exec"), {})
    import multidiff

    loaded = multidiff.load_schedule(tmp_path / "my_schedule.json")
    assert loaded.table.method == "infonoise" and loaded.table.step == 300
    profile = loaded.table.profile
    u, mmse, counts = (np.asarray(profile[k]) for k in ("u", "mmse", "counts"))
    seen = counts >= 50
    assert seen.sum() >= 20
    sigma2 = np.exp(2 * u[seen])
    truth = 0.25 * sigma2 / (0.25 + sigma2)
    rel = np.abs(mmse[seen] / truth - 1)
    assert np.median(rel) < 0.05 and rel.max() < 0.25, rel


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_documented_loop_works_for_every_schedule(name):
    """The README/docs loop (sample, observe, refresh when due; prepare for schedules that read the
    data first) runs for every registered schedule with its defaults."""
    import multidiff

    sched = multidiff.make_schedule(name, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, weighting="edm")
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(512, 16, generator=g)
    if sched.prepare_examples:
        sched.prepare(x[: sched.prepare_examples])
    refreshed = 0
    for step in range(1, 201):
        sigma = sched.sample(32, g)
        batch = x[torch.randint(0, 512, (32,), generator=g)]
        noisy = batch + sigma[:, None] * torch.randn(batch.shape, generator=g)
        error = (noisy * 0.25 / (0.25 + sigma[:, None] ** 2) - batch).square().mean(1)
        sched.observe(sigma, error)
        if sched.refresh_due(step):
            sched.refresh(step)
            refreshed += 1
    assert refreshed == (200 // sched.refresh_every if sched.refresh_every else 0)
    assert torch.isfinite(sched.sample(8, g)).all()


def _statements(code: str) -> list[str]:
    """Code lines without comments, a call continued over lines joined, whitespace collapsed."""
    lines = [line.split("  #")[0].strip() for line in code.splitlines()]
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith(","):
            joined[-1] += " " + line
        elif line:
            joined.append(line)
    return [" ".join(line.split()) for line in joined]


def test_the_drop_in_lines_are_the_tested_ones():
    """Each line the README shows for k-diffusion's and diffusers' loops runs in tests/test_dropins.py
    (verbatim), and the constructors it shows run as written."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    import multidiff

    section = re.search(r"### Drop-ins for k-diffusion.*?\n## ", README, re.S).group(0)
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    tested = set(_statements((REPO / "tests" / "test_dropins.py").read_text()))
    for block in blocks:
        statements = _statements(block)
        made = [s for s in statements if re.match(r"(sample_)?density = multidiff\.", s)]
        assert len(made) == 1
        exec(made[0], {"multidiff": multidiff, "noise_scheduler_copy": FlowMatchEulerDiscreteScheduler()})
        rest = [s for s in statements if s not in made and s != "if accelerator.sync_gradients:"]
        assert rest and [s for s in rest if s not in tested] == []


def test_the_set_up_commands_are_what_ci_runs():
    commands = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    commands = [c for c in commands if not c.startswith("#")]
    assert len(commands) == 2
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci  # the test command, verbatim


def test_linked_files_exist():
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (REPO / target).exists(), target
    for name in re.findall(r"`((?:recipes|examples|tools)/[\w./-]+)`", README):
        assert (REPO / name).exists(), name
    assert os.access(REPO / "tools" / "device_suite.sh", os.X_OK)
