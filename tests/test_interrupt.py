"""Ctrl-C at any moment of any command: "featx: interrupted", exit 130, finished work kept, nothing half-written.

Issue 8, case 8: a Ctrl-C during an XGBoost fit aborted the process with heap corruption (a
KeyboardInterrupt raised inside XGBoost's ctypes data-iterator callback). Each test runs the CLI in a
subprocess through tests/interrupt_driver.py, waits for it to reach a pause point inside the step
(polling for a marker file, never sleeping blindly), sends SIGINT, and checks what is left on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cachefactory import write_signal_cache

from featx.cli import main
from featx.results.records import load_bundle, load_runs

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("interrupt_driver.py")


def interrupt_at(point: str, args, cwd: Path, timeout: float = 120.0) -> tuple[int, str, str]:
    """Run `featx ARGS` until it reaches `point`, send it SIGINT, and return (exit code, stdout, stderr)."""
    marker = cwd / f".reached-{point}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(DRIVER.parent)]))
    process = subprocess.Popen(
        [sys.executable, str(DRIVER), str(marker), point, *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"featx ended (rc {process.returncode}) before reaching {point}:\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"featx did not reach {point} within {timeout:.0f} s")
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


def assert_interrupted(code: int, err: str) -> None:
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "featx: interrupted", err
    assert "Traceback" not in err and "corrupt" not in err and "double free" not in err, err


def no_temporary_files(folder: Path) -> bool:
    """atomic_write's temporaries are hidden files beside their target."""
    return not any(path.name.startswith(".") for path in folder.rglob("*") if path.is_file())


@pytest.fixture
def features(tmp_path) -> Path:
    write_signal_cache(tmp_path / "features" / "tiny.h5", n_train_patients=30, n_test=20, dim=8)
    return tmp_path / "features"


@pytest.mark.parametrize(
    "point, classifiers",
    [("logreg", "xgboost,logreg"), ("xgboost", "logreg,xgboost"), ("dense", "logreg,dense")],
)
def test_ctrl_c_during_a_fit_keeps_the_finished_runs(tmp_path, features, point, classifiers):
    first, interrupted = classifiers.split(",")
    args = ["classify", "--features", features, "--out", tmp_path / "results", "--classifier", classifiers]
    # one process: the fits (a one-point grid's refit included) run where the pause point is installed
    code, out, err = interrupt_at(point, [*args, "--quick", "--cv", "2", "--n-jobs", "1"], tmp_path)
    assert_interrupted(code, err)
    # it says what was kept and how to go on (issue 19.2)
    assert "the 1 run(s) fitted before it are kept" in " ".join(out.split()), out[-800:]
    assert "run the same command to continue" in " ".join(out.split())
    results = tmp_path / "results"
    [run] = load_runs(results)
    assert run["run_id"] == f"tiny__avg__{first}"
    assert load_bundle(results / "models" / f"tiny__avg__{first}.joblib")["run_id"] == run["run_id"]
    assert not list(results.rglob(f"*{interrupted}*"))
    assert no_temporary_files(results)


def test_ctrl_c_during_extract_leaves_a_cache_that_resumes(tmp_path, capsys):
    from featx.data.synthetic import generate_phantoms

    manifest = generate_phantoms(tmp_path / "data", n_patients=10, image_size=32, seed=0)
    args = ["extract", "--backbone", "tiny", "--weights", "random", "--manifest", manifest]
    args += ["--data-root", tmp_path / "data", "--out", tmp_path / "features", "--batch-size", "8"]
    code, out, err = interrupt_at("extract", args, tmp_path)
    assert_interrupted(code, err)
    assert "interrupted at row 8; run the same command to resume" in " ".join(out.split())
    assert not (tmp_path / "features" / "tiny.h5").exists()
    assert (tmp_path / "features" / "tiny.h5.partial").exists()
    assert not (tmp_path / "features" / "tiny.h5.lock").exists()
    assert main([str(a) for a in args]) == 0
    assert "resumed" in capsys.readouterr().out and (tmp_path / "features" / "tiny.h5").exists()


def test_ctrl_c_during_report_leaves_no_half_written_file(tmp_path):
    import numpy as np
    from test_report import _binary_run, _write_runs

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=40)
    runs = [_binary_run("tiny", c, y, rng.random(40), [f"t{i}" for i in range(40)]) for c in ("logreg", "xgboost")]
    results = tmp_path / "results"
    _write_runs(results, runs)
    code, _, err = interrupt_at("report", ["report", "--results", results], tmp_path)
    assert_interrupted(code, err)
    assert not (results / "report.html").exists()
    assert no_temporary_files(results)
    assert [json.loads(p.read_text())["run_id"] for p in sorted((results / "runs").glob("*.json"))] == [
        "tiny__avg__logreg",
        "tiny__avg__xgboost",
    ]


def test_ctrl_c_during_predict_writes_no_output(tmp_path, features):
    from featx.data.synthetic import generate_phantoms

    data = tmp_path / "data"
    generate_phantoms(data, n_patients=8, image_size=32, seed=1)
    bundle = _bundle(tmp_path)
    predictions = tmp_path / "predictions.csv"
    args = ["predict", "--model", bundle, data / "test", "--out", predictions]
    code, _, err = interrupt_at("predict", args, tmp_path)
    assert_interrupted(code, err)
    assert not predictions.exists() and no_temporary_files(tmp_path / "results")


def _bundle(tmp_path: Path) -> Path:
    """A logreg bundle of a tiny random-weights backbone on phantoms (extract + classify, in process)."""
    from rich.console import Console

    from featx.classify.stage import ClassifyConfig
    from featx.data.synthetic import generate_phantoms
    from featx.extract.stage import ExtractConfig, run_extract
    from featx.results.finish import classify_runs

    root = tmp_path / "train"
    manifest = generate_phantoms(root / "data", n_patients=12, image_size=32, seed=0)
    quiet = Console(quiet=True)
    extract = ExtractConfig(
        backbones=("tiny",),
        manifest=manifest,
        data_root=root / "data",
        out_dir=root / "features",
        weights="random",
        image_size=32,
    )
    run_extract(extract, quiet)
    config = ClassifyConfig(features_dir=root / "features", out_dir=tmp_path / "results", classifiers=("logreg",), cv=2)
    classify_runs(config, quiet)
    return tmp_path / "results" / "models" / "tiny__avg__logreg.joblib"
