"""Issue 19, item 2: every verb that finishes a step says what to run next, in a form that runs in this shell."""

from __future__ import annotations

import sys
from pathlib import Path

from imagetree import make_tree
from tinyextract import tiny_args

from featx import config
from featx.cli import main


def test_featx_command_is_runnable_without_featx_on_path(monkeypatch, tmp_path):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.chdir(tmp_path)
    command = config.featx_command()
    script = Path(sys.executable).parent / "featx"
    assert command == (str(script) if script.is_file() else f"{Path(sys.executable).name} -m featx")
    monkeypatch.setattr("shutil.which", lambda name: "/usr/local/bin/featx")
    assert config.featx_command() == "featx"


def _next_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("Next:")]
    assert lines, out
    return lines[-1]


def test_manifest_check_extract_and_classify_each_print_a_next_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    manifest = make_tree(tmp_path / "data", n=16)
    assert main(["manifest", "check", str(manifest), "--data-root", str(manifest.parent)]) == 0
    assert f"extract --backbone resnet50 --manifest {manifest}" in _next_line(capsys.readouterr().out)

    assert main(tiny_args(manifest, tmp_path / "features")) == 0
    line = _next_line(capsys.readouterr().out)
    assert line.startswith(f"Next: {config.featx_command()} classify --features {tmp_path / 'features'}")

    results = tmp_path / "results"
    args = ["classify", "--features", str(tmp_path / "features"), "--out", str(results), "--classifier", "logreg"]
    assert main([*args, "--quick", "--cv", "2", "--no-image-cv"]) == 0
    line = _next_line(capsys.readouterr().out)
    assert f"predict --model {results / 'models' / 'tiny__avg__logreg.joblib'} IMAGES" in line
