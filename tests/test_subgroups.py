"""Subgroup AUCs: the statistics, the checks before any fit, the run JSON, the report, and the demo phantoms."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from cachefactory import signal_dataset, write_cache
from rich.console import Console

from featx.classify import subgroups
from featx.classify.evaluate import delong_ci, independent_auc_test
from featx.classify.stage import ClassifyConfig
from featx.cli import main
from featx.data import synthetic
from featx.data.manifest import read_manifest
from featx.errors import ClassifyError
from featx.extract import store
from featx.results import records
from featx.results.finish import classify_runs, finish_results
from featx.results.report import write_report


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


# ---------------------------------------------------------------- statistics


def test_age_bands():
    assert subgroups.parse_age_bands("0,18,40,65") == (0.0, 18.0, 40.0, 65.0)
    assert subgroups.band_names((0, 18, 40, 65)) == ["0-17", "18-39", "40-64", "65+"]
    assert subgroups.band_names((0, 0.5)) == ["[0, 0.5)", "0.5+"]
    bands = subgroups.age_bands(["17", "18", "64.9", "65", "", "n/a", "90"], (18, 65))
    assert bands.tolist() == ["", "18-64", "18-64", "65+", "", "", "65+"]
    for bad in ("65,40", "a,b", "", "-1,5", "0,0"):
        with pytest.raises(ClassifyError, match="age bands must be increasing ages"):
            subgroups.parse_age_bands(bad)


def test_independent_auc_test_is_the_two_sample_z_test():
    result = independent_auc_test({"value": 0.9, "se": 0.03}, {"value": 0.8, "se": 0.04})
    assert result["z"] == pytest.approx(0.1 / 0.05)
    assert result["p_value"] == pytest.approx(0.0455, abs=1e-4)
    assert independent_auc_test({"value": 0.7, "se": 0}, {"value": 0.7, "se": 0})["p_value"] == 1.0


def test_a_built_in_gap_is_found_and_small_groups_are_named():
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    group = np.array(["easy"] * 100 + ["hard"] * 90 + ["rare"] * 10, dtype=object)
    score = np.where(group == "easy", y + rng.normal(0, 0.3, n), y * 0.2 + rng.normal(0, 1.0, n))
    sex = np.where(np.arange(n) % 7 == 0, "", group)  # every 7th row without a value
    result = subgroups.subgroup_analysis(y, score, {"site": group, "sex": sex}, ["site", "sex"], min_count=10)
    site = result["attributes"]["site"]
    assert [g["name"] for g in site["groups"]] == ["easy", "hard"]
    assert [g["name"] for g in site["too_small"]] == ["rare"] and site["n_missing"] == 0
    easy = site["groups"][0]
    rows = group == "easy"
    assert easy["auc"] == delong_ci(y[rows], score[rows]) and easy["n"] == 100
    assert easy["n_positive"] + easy["n_negative"] == 100
    gap = site["largest_gap"]
    assert (gap["high"], gap["low"], gap["n_pairs"]) == ("easy", "hard", 1)
    assert gap["significant"] and gap["p_adjusted"] == pytest.approx(gap["p_value"]) and gap["p_value"] < 1e-4
    assert result["attributes"]["sex"]["n_missing"] == int(np.sum(sex == ""))


def test_the_gap_p_value_is_adjusted_over_the_pairs():
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 150)
    group = np.repeat(["a", "b", "c"], 100).astype(object)
    score = y * np.repeat([1.0, 0.8, 0.6], 100) + rng.normal(0, 1, 300)
    gap = subgroups.subgroup_analysis(y, score, {"g": group}, ["g"])["attributes"]["g"]["largest_gap"]
    assert gap["n_pairs"] == 3 and gap["p_adjusted"] == pytest.approx(min(1.0, 3 * gap["p_value"]))


def test_checks_name_the_missing_column_and_the_task():
    with pytest.raises(
        ClassifyError, match=r"--subgroups age_band: 'x.h5' has no 'age' metadata column \(it has \['sex'\]\)"
    ):
        subgroups.check_subgroups(["sex", "age_band"], ["sex"], "binary", "x.h5")
    with pytest.raises(ClassifyError, match="--subgroups needs a binary task; 'x.h5' is multilabel"):
        subgroups.check_subgroups(["sex"], ["sex"], "multilabel", "x.h5")


# ---------------------------------------------------------------- stage two, run JSON, report


def _meta_cache(path, n_test=120):
    data = signal_dataset(n_train_patients=40, n_test=n_test, separation=1.2)
    n = len(data["y"])
    rng = np.random.default_rng(5)
    meta = {
        "sex": rng.choice(["F", "M"], n).tolist(),
        "age": [str(a) for a in rng.integers(20, 90, n)],
        "view": rng.choice(["PA", "AP", ""], n).tolist(),
    }
    return write_cache(
        path, {"avg": data["X"]}, data["y"], data["classes"], data["split"], data["patient_id"], meta=meta
    )


def test_classify_writes_subgroups_and_test_metadata_into_the_run_json(tmp_path):
    cache = _meta_cache(tmp_path / "features" / "tiny.h5")
    rows = store.read_rows(cache)
    assert set(rows.meta) == {"sex", "age", "view"}
    config = ClassifyConfig(
        features_dir=tmp_path / "features",
        out_dir=tmp_path / "results",
        classifiers=("logreg",),
        cv=3,
        quick=True,
        subgroups=("sex", "age_band", "view"),
        age_bands=(0, 50),
    )
    classify_runs(config, _quiet())
    run = records.load_runs(tmp_path / "results")[0]
    assert run["config"]["subgroups"] == ["sex", "age_band", "view"] and run["config"]["age_bands"] == [0, 50]
    test_rows = np.flatnonzero(rows.split.astype(str) == "test")
    assert run["test_predictions"]["meta"]["age"] == rows.meta["age"][test_rows].tolist()
    attributes = run["subgroups"]["attributes"]
    assert list(attributes) == ["sex", "age_band", "view"]
    assert {g["name"] for g in attributes["age_band"]["groups"]} == {"0-49", "50+"}
    assert attributes["view"]["n_missing"] == int(np.sum(rows.meta["view"][test_rows] == ""))
    # the run JSON's numbers are DeLong on exactly the stored test predictions
    y, score = np.asarray(run["test_predictions"]["y_true"]), np.asarray(run["test_predictions"]["score"])
    sex = np.asarray(run["test_predictions"]["meta"]["sex"])
    female = next(g for g in attributes["sex"]["groups"] if g["name"] == "F")
    assert female["auc"]["value"] == pytest.approx(delong_ci(y[sex == "F"], score[sex == "F"])["value"])
    assert json.loads((tmp_path / "results" / "runs" / f"{run['run_id']}.json").read_text())["subgroups"]

    console = Console(file=io.StringIO(), width=160)
    finished = finish_results(tmp_path / "results", console)
    output = console.file.getvalue()
    assert "Subgroup test AUCs — tiny__avg__logreg" in output and "age_band: largest gap" in output
    html = finished.report.read_text()
    assert "<h2 id='subgroups'>Subgroups</h2>" in html and "Subgroup AUCs — tiny__avg__logreg" in html
    assert (tmp_path / "results" / "plots" / "forest_tiny__avg__logreg.png").is_file()


def test_a_report_of_runs_without_subgroups_says_how_to_get_them(tmp_path):
    _meta_cache(tmp_path / "features" / "tiny.h5")
    config = ClassifyConfig(
        features_dir=tmp_path / "features", out_dir=tmp_path / "results", classifiers=("logreg",), cv=3, quick=True
    )
    classify_runs(config, _quiet())
    assert records.load_runs(tmp_path / "results")[0]["subgroups"] is None
    html = write_report(tmp_path / "results").read_text()
    assert "No subgroup analysis in these runs" in html


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--subgroups", "site"], "--subgroups site: "),
        (["--subgroups", "sex", "--age-bands", "65,18"], "age bands must be increasing"),
    ],
)
def test_subgroup_mistakes_exit_2_before_any_fit(tmp_path, capsys, argv, words):
    _meta_cache(tmp_path / "features" / "tiny.h5")
    code = main(["classify", "--features", str(tmp_path / "features"), "--out", str(tmp_path / "r"), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "r" / "runs").exists() or not list((tmp_path / "r" / "runs").glob("*.json"))


# ---------------------------------------------------------------- the demo phantoms


def test_phantom_metadata_leaves_the_images_and_the_split_of_generator_1(tmp_path):
    manifest = synthetic.generate_phantoms(tmp_path / "p", n_patients=12, image_size=16, seed=3)
    read = read_manifest(manifest)
    text = "\n".join(
        ",".join(values)
        for values in zip(
            read.paths, ("|".join(lab) for lab in read.labels), read.splits, read.patient_ids, read.file_sha256
        )
    )
    # the same digest generator version 1 (no metadata) gave for these parameters
    assert (
        hashlib.sha256(text.encode()).hexdigest() == "2489c55ee4f761c29c5735945a034966aba1ebcaa99e6346ea120160640460e6"
    )
    assert set(read.meta) == {"sex", "age", "view"}
    assert set(read.meta["sex"]) <= {"F", "M"} and set(read.meta["view"]) <= {"PA", "AP"}


def test_phantoms_have_the_built_in_age_difference(tmp_path):
    manifest = read_manifest(synthetic.generate_phantoms(tmp_path / "p", n_patients=40, image_size=16))
    age = {pid: int(a) for pid, a in zip(manifest.patient_ids, manifest.meta["age"])}
    label = {pid: names[0] for pid, names in zip(manifest.patient_ids, manifest.labels)}
    masses = {}
    for pid in age:
        index = int(pid.split("-")[1])
        rng = np.random.default_rng([0, 1, index])
        anatomy = synthetic._draw_anatomy(rng)
        if label[pid] == "opacity":
            masses[pid] = synthetic.haze_mass(synthetic._draw_opacities(rng, anatomy))
    old = [masses[p] for p in masses if age[p] >= synthetic.OLD_AGE]
    young = [masses[p] for p in masses if age[p] < synthetic.OLD_AGE]
    assert old and young and max(old) < min(young)  # the faint-opacity half is 65+
    normal_ages = [age[p] for p in age if label[p] == "normal"]
    assert min(normal_ages) < synthetic.OLD_AGE <= max(normal_ages)
