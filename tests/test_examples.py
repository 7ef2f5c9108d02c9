"""The example scripts run on the bundled digits by default, twice in a row (their runs are replaced)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, made",
    [
        ("anomaly_detection.py", ["--epochs", "3"], "anomaly.json"),
        ("dimensionality_reduction.py", ["--epochs", "3", "--latent-dim", "2"], "dimred.json"),
        ("custom_prior.py", ["--epochs", "3"], "metrics.json"),
    ],
)
def test_example_runs_on_the_digits(tmp_path, script, args, made):
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, str(ROOT / "examples" / script), *args, "--out", str(tmp_path / "out")],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads((tmp_path / "out" / made).read_text())
