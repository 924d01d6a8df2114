"""Issue 17: external validation, the metadata-only floor, the permutation null and the CLAIM checklist."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cachefactory import signal_dataset, write_cache
from rich.console import Console

from featx.classify import external, metadata_floor, null
from featx.classify.stage import ClassifyConfig
from featx.cli import main
from featx.errors import ClassifyError
from featx.results import claim, leaderboard, records, validation
from featx.results.finish import classify_command


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200, color_system=None)


def config_for(root: Path, **overrides) -> ClassifyConfig:
    settings = dict(
        features_dir=root / "features",
        out_dir=root / "results",
        classifiers=("logreg",),
        cv=3,
        seed=0,
        n_jobs=1,
        quick=True,
        image_cv=False,
    )
    settings.update(overrides)
    return ClassifyConfig(**settings)


def write_dataset(path: Path, separation=1.5, meta=None, classes=None, y=None, seed=0, feature_seed=1) -> dict:
    data = signal_dataset(seed=seed, feature_seed=feature_seed, separation=separation)
    labels = data["y"] if y is None else y
    write_cache(
        path,
        {"avg": data["X"]},
        labels,
        classes or data["classes"],
        data["split"],
        data["patient_id"],
        meta=meta(data) if meta else None,
    )
    return data


def run_records(root: Path) -> dict[str, dict]:
    return {run["run_id"]: run for run in records.load_runs(root / "results")}


# ---------------------------------------------------------------- external validation


def test_external_identical_to_internal_test_split_gives_the_same_auc(tmp_path):
    write_dataset(tmp_path / "features" / "tiny.h5")
    shutil.copytree(tmp_path / "features", tmp_path / "same")
    config = config_for(tmp_path, externals=(("same", tmp_path / "same"),))
    classify_command(config, quiet_console())
    run = run_records(tmp_path)["tiny__avg__logreg"]
    section = run["external"]["same"]
    assert section["n"] == run["data"]["n_test"]
    assert section["auc"]["value"] == pytest.approx(run["test"]["auc"]["value"], abs=1e-12)
    assert section["auc"]["ci_low"] == pytest.approx(run["test"]["auc"]["ci_low"], abs=1e-12)
    assert section["difference"]["kind"] == "paired"
    assert section["difference"]["difference"] == pytest.approx(0.0, abs=1e-12)
    assert section["difference"]["p_value"] == pytest.approx(1.0)
    assert section["sensitivity"] == pytest.approx(run["test"]["sensitivity"])
    assert section["specificity"] == pytest.approx(run["test"]["specificity"])
    calibration = section["calibration"]
    assert calibration["internal"]["ece"] == pytest.approx(calibration["external"]["ece"])
    row = leaderboard.leaderboard_rows([run])[0]
    assert row["external_set"] == "same" and row["external_auc"] == pytest.approx(run["test"]["auc"]["value"])
    report = (tmp_path / "results" / "report.html").read_text()
    assert "<h2 id='external'>External validation</h2>" in report and "paired" in report
    assert (tmp_path / "results" / "plots" / "external_calibration_tiny.png").is_file()
    # a later command without --external removes the stale section; old records (no key) still load
    classify_command(config_for(tmp_path), quiet_console())
    assert "external" not in run_records(tmp_path)["tiny__avg__logreg"]


def test_external_set_from_another_dataset_is_unpaired_with_all_rows(tmp_path):
    write_dataset(tmp_path / "features" / "tiny.h5")
    write_dataset(tmp_path / "other" / "tiny.h5", separation=0.7, seed=5, feature_seed=6)
    config = config_for(tmp_path, externals=(("other", tmp_path / "other"),), external_split="all")
    classify_command(config, quiet_console())
    run = run_records(tmp_path)["tiny__avg__logreg"]
    section = run["external"]["other"]
    assert section["split"] == "all" and section["n"] > run["data"]["n_test"]
    assert section["difference"]["kind"] == "unpaired"
    assert section["auc"]["value"] < run["test"]["auc"]["value"]  # a weaker signal at the other "site"
    assert section["threshold_external"]["rule"] == "youden"


def test_an_unseen_external_class_is_one_sentence_before_any_fit(tmp_path, capsys):
    data = write_dataset(tmp_path / "features" / "tiny.h5")
    y = np.asarray(data["y"]).copy()
    y[:5] = 2
    write_dataset(tmp_path / "other" / "tiny.h5", classes=("NORMAL", "PNEUMONIA", "COVID"), y=y)
    args = ["classify", "--classifier", "logreg", "--quick", "--cv", "3", "--features", str(tmp_path / "features")]
    args += ["--out", str(tmp_path / "results"), "--external", f"b={tmp_path / 'other'}", "--external-split", "all"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featx: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "'COVID'" in err and "never saw" in err and "--label-map COVID=" in err
    assert not (tmp_path / "results" / "runs").exists() or not list((tmp_path / "results" / "runs").glob("*.json"))
    # mapped onto a known class, the same set is scored
    assert main([*args, "--label-map", "COVID=PNEUMONIA"]) == 0
    capsys.readouterr()
    section = run_records(tmp_path)["tiny__avg__logreg"]["external"]["b"]
    assert section["label_map"] == {"COVID": "PNEUMONIA"}


def test_external_cache_of_other_settings_or_missing_is_refused(tmp_path):
    write_dataset(tmp_path / "features" / "tiny.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClassifyError, match="has no 'tiny.h5'"):
        classify_command(config_for(tmp_path, externals=(("e", tmp_path / "empty"),)), quiet_console())
    data = signal_dataset(seed=0, feature_seed=1)
    write_cache(
        tmp_path / "bad" / "tiny.h5",
        {"avg": data["X"]},
        data["y"],
        data["classes"],
        data["split"],
        data["patient_id"],
        image_size=[64, 64],
    )
    with pytest.raises(ClassifyError, match="not built like"):
        classify_command(config_for(tmp_path, externals=(("b", tmp_path / "bad"),)), quiet_console())
    with pytest.raises(ClassifyError, match="NAME=FEATURES_DIR"):
        external.parse_external("no-folder")


def test_ece_and_calibration_bins():
    y = np.array([0, 0, 1, 1])
    perfect = external.calibration_bins(y, np.array([0.0, 0.0, 1.0, 1.0]))
    assert perfect["ece"] == pytest.approx(0.0)
    wrong = external.calibration_bins(y, np.array([1.0, 1.0, 0.0, 0.0]))
    assert wrong["ece"] == pytest.approx(1.0)


# ---------------------------------------------------------------- metadata floor


def test_metadata_column_encoding_the_label_drives_the_floor_to_one_and_warns(tmp_path):
    def meta(data):
        labels = np.asarray(data["y"])
        n = len(labels)
        return {
            "leak": ["sick" if v else "well" for v in labels],
            "age": [str(20 + (7 * i) % 60) for i in range(n)],
            "view": ["PA" if i % 3 else "AP" for i in range(n)],
        }

    write_dataset(tmp_path / "features" / "tiny.h5", separation=0.8, meta=meta)
    console = quiet_console()
    classify_command(config_for(tmp_path), console)
    runs = run_records(tmp_path)
    floor = runs["metadata__avg__logreg"]
    assert floor["backbone"] == "metadata" and floor["weights"] == "none"
    assert floor["test"]["auc"]["value"] > 0.99
    # rows sharing their metadata are identical there: no near-duplicate audit, the exact one (file hashes) stays
    assert floor["audit"]["near_duplicates"] is None and floor["audit"]["near_duplicates_skipped"]
    image_run = runs["tiny__avg__logreg"]["audit"]
    assert image_run["near_duplicates"]["n_rows"] == floor["audit"]["exact_duplicates"]["n_rows"]
    audits = {item: text for item, text, _ in claim.checklist(list(runs.values()))}["Evaluation: audits"]
    assert f"exact-duplicate audit in {len(runs)} run(s), near-duplicate audit in {len(runs) - 1}," in audits
    sentence = validation.metadata_floor_sentence(list(runs.values()))
    assert sentence is not None and sentence.startswith("⚠") and "shortcuts" in sentence
    assert "Metadata-only floor" in console.file.getvalue()
    encoder = metadata_floor.encoder_of(tmp_path / "features" / "metadata.h5")
    kinds = {column["name"]: column["kind"] for column in encoder["columns"]}
    assert kinds == {"leak": "categorical", "age": "numeric", "view": "categorical"}
    # --no-metadata-floor leaves it out; an unchanged floor cache is not rebuilt (its run is reused)
    mtime = (tmp_path / "features" / "metadata.h5").stat().st_mtime_ns
    classify_command(config_for(tmp_path, out_dir=tmp_path / "r2", metadata_floor=False), quiet_console())
    assert not (tmp_path / "r2" / "runs" / "metadata__avg__logreg.json").exists()
    classify_command(config_for(tmp_path), quiet_console())
    assert (tmp_path / "features" / "metadata.h5").stat().st_mtime_ns == mtime


def test_uninformative_metadata_floor_stays_near_chance_without_warning(tmp_path):
    rng = np.random.default_rng(3)

    def meta(data):
        return {"view": [rng.choice(["PA", "AP"]) for _ in data["y"]]}

    write_dataset(tmp_path / "features" / "tiny.h5", separation=2.0, meta=meta)
    classify_command(config_for(tmp_path), quiet_console())
    runs = list(run_records(tmp_path).values())
    sentence = validation.metadata_floor_sentence(runs)
    assert sentence is not None and not sentence.startswith("⚠")


def test_no_metadata_columns_no_floor(tmp_path):
    write_dataset(tmp_path / "features" / "tiny.h5")
    classify_command(config_for(tmp_path), quiet_console())
    assert set(run_records(tmp_path)) == {"tiny__avg__logreg"}
    assert validation.metadata_floor_sentence(list(run_records(tmp_path).values())) is None


# ---------------------------------------------------------------- permutation null


def test_permuted_labels_move_between_patients_never_within():
    groups = np.repeat([f"P{i}" for i in range(40)], 3)
    y = np.repeat(np.arange(40) % 2, 3)
    permuted = null.permuted_labels(y, groups, np.random.default_rng(0))
    for patient in np.unique(groups):
        assert len(set(permuted[groups == patient])) == 1
    assert permuted.sum() == y.sum() and not np.array_equal(permuted, y)


def test_null_aucs_centre_on_one_half_and_the_real_signal_beats_them():
    from sklearn.linear_model import LogisticRegression

    from featx.classify.search import FoldSearch  # noqa: F401 - the fitted search's interface below

    data = signal_dataset(seed=1, feature_seed=2, n_train_patients=80, separation=1.5)
    X, y, split, groups = data["X"], np.asarray(data["y"]), np.asarray(data["split"]), np.asarray(data["patient_id"])
    train, test = split == "train", split == "test"

    class Search:  # the two attributes permutation_null reads from a fitted FoldSearch
        best_estimator_ = LogisticRegression(C=1.0, max_iter=500)
        threads = 1
        n_jobs = 1

    estimator = LogisticRegression(C=1.0, max_iter=500).fit(X[train], y[train])
    from featx.classify import evaluate

    real = evaluate.auc("binary", y[test], estimator.predict_proba(X[test])[:, 1])
    result = null.permutation_null(
        Search(), "binary", X[train], y[train], groups[train], X[test], y[test], 30, real_auc=real
    )
    assert result["n_valid"] == 30 and abs(result["mean"] - 0.5) < 0.06
    assert result["p_value"] == pytest.approx(1 / 31) and result["distinguishable"] is True
    assert result["decided_by"] == "permutation p-value"


def test_null_in_classify_and_the_report_flags_chance(tmp_path):
    write_dataset(tmp_path / "features" / "tiny.h5", separation=0.0)  # no signal at all
    classify_command(config_for(tmp_path, null_permutations=4), quiet_console())
    run = run_records(tmp_path)["tiny__avg__logreg"]
    assert run["null"]["permutations"] == 4 and len(run["null"]["aucs"]) == 4
    assert run["timings"]["n_fits"] >= 4 and "null_s" in run["timings"]
    report = (tmp_path / "results" / "report.html").read_text()
    if run["null"]["distinguishable"] is False:
        assert "not distinguishable from chance" in report
    with pytest.raises(ClassifyError, match="null-permutations"):
        classify_command(config_for(tmp_path, null_permutations=-1), quiet_console())


def test_summarize_with_few_permutations_uses_the_normal_approximation():
    summary = null.summarize([0.5, 0.52, 0.48, 0.5], real_auc=0.51)
    assert summary["distinguishable"] is False and "normal approximation" in summary["decided_by"]
    assert summary["p_min"] == pytest.approx(0.2)


# ---------------------------------------------------------------- CLAIM and old records


def test_claim_checklist_fills_from_provenance_and_lists_the_unknowns(tmp_path):
    write_dataset(tmp_path / "features" / "tiny.h5")
    classify_command(config_for(tmp_path), quiet_console())
    runs = list(run_records(tmp_path).values())
    rows = claim.checklist(runs)
    items = {item: text for item, text, _ in rows}
    assert runs[0]["manifest_sha256"] in items["Data: manifest"]
    assert items["Evaluation: external validation"].startswith("no")
    assert sum(text.startswith(claim.AUTHOR) for text in items.values()) == len(claim.AUTHOR_ITEMS)
    report = (tmp_path / "results" / "report.html").read_text()
    assert "<h2 id='claim'>CLAIM checklist</h2>" in report and "for the author" in report


def test_old_records_without_the_new_keys_load(tmp_path):
    write_dataset(tmp_path / "features" / "tiny.h5")
    classify_command(config_for(tmp_path), quiet_console())
    path = tmp_path / "results" / "runs" / "tiny__avg__logreg.json"
    record = json.loads(path.read_text())
    for key in ("external", "null"):
        record.pop(key, None)
    path.write_text(json.dumps(record))
    runs = records.load_runs(tmp_path / "results")
    row = leaderboard.leaderboard_rows(runs)[0]
    assert row["external_auc"] is None and row["null_p_value"] is None
    html, plots = validation.external_section(runs)
    assert "No external validation" in html and plots == []
    assert "No permutation null" in validation.null_section(runs)


# ---------------------------------------------------------------- the demo's second site


def test_phantom_site_b_is_a_shifted_acquisition_of_other_patients(tmp_path):
    from PIL import Image

    from featx.data.manifest import read_manifest
    from featx.data.synthetic import PhantomParams, existing_phantoms, generate_phantoms

    a = read_manifest(generate_phantoms(tmp_path / "a", n_patients=8, image_size=64, seed=0))
    b_path = generate_phantoms(tmp_path / "b", n_patients=8, image_size=64, seed=0, site="B")
    b = read_manifest(b_path)
    assert "site" not in a.meta and set(b.meta["site"]) == {"B"}
    assert all(p.startswith("siteb-") for p in b.patient_ids) and not set(a.patient_ids) & set(b.patient_ids)
    first_a = np.asarray(Image.open(tmp_path / "a" / a.paths[0]), dtype=float)
    first_b = np.asarray(Image.open(tmp_path / "b" / b.paths[0]), dtype=float)
    assert first_b.min() > first_a.min() + 10  # the lifted black level: lower contrast
    corner = first_b[2:8, 64 - 8 : 64 - 2]
    assert corner.max() > 200  # the burned-in marker
    params = PhantomParams(8, (2, 5), 64, 0.74, 0.2, 0, site="B")
    assert existing_phantoms(tmp_path / "b", params) == b_path
    assert "site" not in PhantomParams(8, (2, 5), 64, 0.74, 0.2, 0).to_json()


def test_predict_refuses_a_metadata_floor_bundle_in_one_sentence(tmp_path):
    from featx.errors import BundleError
    from featx.results.predict import backbone_recipe

    with pytest.raises(BundleError, match="metadata-only floor"):
        backbone_recipe({"backbone": "metadata", "pooling": "avg", "image_size": [32, 32]}, tmp_path / "m.joblib")


@pytest.mark.parametrize(
    "kind", [dict(n_classes=3), dict(multilabel=True, n_classes=3)], ids=["multiclass", "multilabel"]
)
def test_external_and_null_for_multiclass_and_multilabel_runs(tmp_path, kind):
    from cachefactory import write_signal_cache

    write_signal_cache(tmp_path / "features" / "tiny.h5", **kind)
    write_signal_cache(tmp_path / "ext" / "tiny.h5", seed=4, feature_seed=5, **kind)
    config = config_for(tmp_path, externals=(("b", tmp_path / "ext"),), external_split="all", null_permutations=2)
    classify_command(config, quiet_console())
    run = run_records(tmp_path)["tiny__avg__logreg"]
    section = run["external"]["b"]
    assert section["auc"]["value"] > 0.7 and section["difference"]["kind"] == "unpaired"
    assert len(run["null"]["aucs"]) == 2


def test_a_null_left_off_keeps_the_input_key_of_runs_fitted_before_it_existed(tmp_path):
    from featx.classify.stage import input_key, plan_runs, run_inputs

    write_dataset(tmp_path / "features" / "tiny.h5")
    config = config_for(tmp_path)
    plan = plan_runs(config)[0]
    inputs = run_inputs(plan, config, "hash")
    assert "null_permutations" not in inputs["settings"]
    with_null = run_inputs(plan, config_for(tmp_path, null_permutations=3), "hash")
    assert with_null["settings"]["null_permutations"] == 3 and input_key(with_null) != input_key(inputs)
    externals = run_inputs(plan, config_for(tmp_path, externals=(("x", tmp_path),)), "hash")
    assert input_key(externals) == input_key(inputs)  # an external set never refits a run


def test_the_python_api_takes_external_sets_as_a_mapping(tmp_path):
    import featx

    write_dataset(tmp_path / "features" / "tiny.h5")
    shutil.copytree(tmp_path / "features", tmp_path / "same")
    featx.classify(
        tmp_path / "features",
        out=tmp_path / "results",
        classifiers="logreg",
        verbose=False,
        cv=3,
        quick=True,
        n_jobs=1,
        image_cv=False,
        externals={"same": str(tmp_path / "same")},
        label_map="NORMAL=NORMAL",
    )
    assert run_records(tmp_path)["tiny__avg__logreg"]["external"]["same"]["difference"]["kind"] == "paired"
