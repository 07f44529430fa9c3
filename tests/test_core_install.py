"""`pip install multidiff` (no extras) is the schedule library alone: torch, numpy and scipy. This
runs the library's path in a process where the trainer's, the domains' and the reports' packages
cannot be imported (as in an environment that never installed them), and checks that the command
line, which needs them, says which extra to install. CI also installs the core alone into a
fresh venv and runs this file and the library's tests there."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("lightning", "pytorch_lightning", "torchaudio", "datasets", "matplotlib", "sklearn", "yaml", "tokenizers",
         "soundfile", "diffusers", "filelock")  # fmt: skip

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {HEAVY!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Blocker())
""")


def run_without_extras(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})  # fmt: skip


def test_the_schedule_library_runs_without_any_extra(tmp_path):
    proc = run_without_extras("""
        import json, sys, torch
        from multidiff import DDPM, FlowMatching, load_schedule, make_schedule, interop
        from multidiff.schedules.grids import from_schedule
        from multidiff.diffusion.sampling import heun
        s = make_schedule("infonoise", sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, weighting="edm", warmup=0, refresh=1)
        sigma = s.sample(256, torch.Generator().manual_seed(0))
        s.observe(sigma, sigma**2 * 0.25 / (sigma**2 + 0.25), sigma * 0)  # a Gaussian's exact x0 error
        s.refresh(1)
        s.save("schedule.json")
        grid = from_schedule("schedule.json", 32)
        x = heun(lambda x, sig: x * 0.25 / (0.25 + sig.reshape(-1, 1) ** 2), grid[0] * torch.randn(512, 1), grid)
        loop = DDPM((1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)).cumprod(0)).make_schedule("infonoise", target="eps")
        flow = FlowMatching().make_schedule("laplace", target="velocity")
        from multidiff import KDiffusionDensity
        sample_density = KDiffusionDensity(sigma_data=0.5, warmup=1, refresh=1)
        sig = sample_density([64], device="cpu")
        sample_density.observe(sig, torch.ones(64))
        assert sample_density.step()
        print(json.dumps({"std": float(x.std()), "frozen": load_schedule("schedule.json").name,
                          "loaded": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}))
    """.replace("HEAVY", repr(HEAVY)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == [], out
    assert out["std"] == pytest.approx(0.5, rel=0.15)  # 32 Heun steps of the exact denoiser land near the data's std


def test_the_command_line_names_the_extra_it_needs(tmp_path):
    proc = run_without_extras(f"""
        import sys
        from multidiff.cli import main
        sys.exit(main(["train", {str(REPO / "recipes" / "binary_digits.yaml")!r}, "--print-recipe"]))
    """, tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-2000:]
    assert err[0].startswith("multidiff: error:") and "pip install 'multidiff[train]'" in err[0]
