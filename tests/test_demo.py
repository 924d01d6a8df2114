"""featx demo --quick end to end: phantoms -> tiny backbone -> three classifiers -> leaderboard, report, predict."""

from __future__ import annotations

import csv
import json
import os
import stat

from rich.console import Console

from featx.cli import main
from featx.demo import DemoConfig, demo_command, effective_config
from featx.results.predict import predict_paths


def test_quick_demo_end_to_end_with_a_predict_round_trip(tmp_path, capsys):
    workdir = tmp_path / "demo"
    old_umask = os.umask(0o027)  # a shared server's: results readable by the group, not by others
    try:
        assert main(["demo", "--quick", "--workdir", str(workdir)]) == 0
    finally:
        os.umask(old_umask)
    out = capsys.readouterr().out
    results = workdir / "results"
    # the Next: commands are whole lines at any width (a wrapped path cannot be pasted)
    assert any(line.strip().endswith(".joblib " + str(workdir / "data" / "test") + " --out predictions.csv")
               for line in out.splitlines())  # fmt: skip
    modes = {
        p.relative_to(results).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in results.rglob("*") if p.is_file()
    }
    assert {"report.html", "leaderboard.csv", "leaderboard.md"} <= set(modes)
    assert any(name.startswith("runs/") for name in modes) and any(name.startswith("models/") for name in modes)
    assert any(name.startswith("plots/") for name in modes)
    assert {name: oct(mode) for name, mode in modes.items() if mode != 0o640} == {}
    assert "RANDOM-INIT WEIGHTS" in out and "featx predict --model" in out
    rows = list(csv.DictReader((results / "leaderboard.csv").open()))
    assert {r["classifier"] for r in rows} == {"logreg", "xgboost", "dense"}
    # the raw-pixel and metadata-only floors are on every demo leaderboard, beside the CNN and the token model
    assert {r["backbone"] for r in rows} == {"pixels", "tiny", "tiny-vit", "metadata"}
    assert all(r["external_set"] == "site-B" and r["external_auc"] for r in rows)  # issue 17: site B, every run
    report = (results / "report.html").read_text()
    assert "RANDOM-INIT WEIGHTS" in report and report.count("data:image/png;base64,") >= 4
    assert "<h2 id='external'>External validation</h2>" in report and "<h2 id='claim'>CLAIM checklist" in report
    assert "manifest check of" in report  # the demo passes its manifest to the report's data checks
    assert "Raw-pixel floor: pixels/avg/" in report and "CV AUC, image folds" in report
    assert "Foundation models: the best, tiny-vit/cls+mean/" in report  # the token path, end to end
    assert "efficiency_test_auc.png" in report and "near_duplicates_pixels" in report  # thumbnails: images found
    for run_file in (results / "runs").glob("*.json"):
        run = json.loads(run_file.read_text())
        assert run["random_weights"] is (run["backbone"] in ("tiny", "tiny-vit"))
        assert [p["fraction"] for p in run["efficiency"]["points"]] == [0.1, 0.3, 1.0]
        if run["backbone"] == "metadata":  # encoded manifest columns: identical rows, not near-duplicate images
            assert run["audit"]["near_duplicates"] is None and "metadata" in run["audit"]["near_duplicates_skipped"]
        else:
            assert run["audit"]["exact_duplicates"]["n_hashed"] == run["audit"]["near_duplicates"]["n_rows"]
        if run["classifier"] == "logreg":  # the image-level CV audit runs where it is cheap (issue 16)
            assert run["audit"]["split_levels"]["image"]["auc_mean"] is not None
        else:
            assert run["audit"]["split_levels"] is None and "--image-cv-all" in run["audit"]["split_levels_skipped"]
        assert run["external"]["site-B"]["auc"]["value"] is not None and len(run["null"]["aucs"]) == 2

    run = json.loads((results / "runs" / "tiny__avg__xgboost.json").read_text())
    test_images = [str(workdir / "data" / rel) for rel in run["test_predictions"]["ids"]]
    predictions = predict_paths(results / "models" / "tiny__avg__xgboost.joblib", test_images)
    assert [p["p_opacity"] for p in predictions] == run["test_predictions"]["score"]

    # a second demo reuses its runs (same caches, same settings) and drops runs that are not its own
    own = sorted(p.stem for p in (results / "runs").glob("*.json"))
    (results / "runs" / "other__avg__logreg.json").write_text(json.dumps({**run, "run_id": "other__avg__logreg"}))
    assert main(["demo", "--quick", "--workdir", str(workdir)]) == 0
    assert f"{len(own)} of {len(own)} runs reused" in capsys.readouterr().out
    assert sorted(p.stem for p in (results / "runs").glob("*.json")) == own


def test_second_run_reuses_the_data_and_data_only_generates_only_data(tmp_path):
    console = Console(record=True, width=200)
    config = DemoConfig(workdir=tmp_path, quick=True, data_only=True)
    demo_command(config, console)
    manifest = tmp_path / "data" / "manifest.csv"
    assert manifest.is_file() and not (tmp_path / "features").exists() and not (tmp_path / "results").exists()
    stamp = manifest.stat().st_mtime_ns
    demo_command(config, console)
    assert manifest.stat().st_mtime_ns == stamp
    assert "reused" in console.export_text()


def test_quick_shrinks_only_what_was_left_at_its_default():
    quick = effective_config(DemoConfig(quick=True))
    assert (quick.backbones, quick.n_patients, quick.image_size) == (("pixels", "tiny", "tiny-vit"), 16, 32)
    chosen = effective_config(DemoConfig(quick=True, backbones=("mobilenetv2",), n_patients=30, image_size=64))
    assert (chosen.backbones, chosen.n_patients, chosen.image_size) == (("mobilenetv2",), 30, 64)
    assert effective_config(DemoConfig()).backbones == ("pixels", "mobilenetv3small", "resnet50", "tiny-vit")


def test_imagenet_weights_that_cannot_be_had_stop_the_demo_with_one_sentence(tmp_path, capsys, offline):
    code = main(
        [
            "demo",
            "--workdir",
            str(tmp_path),
            "--weights",
            "imagenet",
            "--backbones",
            "mobilenetv3small",
            "--patients",
            "8",
            "--image-size",
            "32",
            "--classifiers",
            "logreg",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "ImageNet weights" in err and "--weights random" in err and "Traceback" not in err
    assert len(offline) == 1  # one download was tried, and refused
