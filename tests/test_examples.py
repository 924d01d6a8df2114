"""The example notebook (examples/featx_in_a_notebook.py, a jupytext percent file) runs as a plain script, offline."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "featx_in_a_notebook.py"


def test_the_example_notebook_runs_offline_through_the_api(tmp_path):
    workdir = tmp_path / "notebook"
    env = {
        **os.environ,
        "FEATX_EXAMPLE_DIR": str(workdir),
        "PYTHONPATH": os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",
    }
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(NOTEBOOK)], cwd=tmp_path, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-4000:]
    with open(workdir / "results" / "leaderboard.csv", newline="") as handle:
        backbones = {row["backbone"] for row in csv.DictReader(handle)}
    assert backbones == {"pixels", "tiny", "metadata"}  # the two floors beside the backbone
    assert (workdir / "test_auc_by_backbone.png").read_bytes().startswith(b"\x89PNG")
    with open(workdir / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 3 and all(row["predicted_label"] and not row["error"] for row in predictions)
    print(f"example notebook: {seconds:.1f} s")
