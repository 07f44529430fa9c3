"""The benchmark tools run and print their figures (the GPU suite as its CPU dry run)."""
import os
import subprocess
import sys

from conftest import REPO


def test_device_suite_dry_run_prints_every_figure(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "suite"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "tools" / "device_suite.sh"), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for domain in ("binary_image", "text", "latent_image"):
        assert f"{domain} " in out, domain
    assert out.count("trainer/raw step-time ratio:") == 2  # all domains, then the compiled transformer
    assert (tmp_path / "suite" / "throughput.json").is_file()
    assert (tmp_path / "suite" / "fashion" / "report.md").is_file()
