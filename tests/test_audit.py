"""Audits: near duplicates from embeddings (blocked), exact duplicates by hash, patient- vs image-level CV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from featx.classify import audit, evaluate
from featx.errors import ClassifyError


def _planted(n=300, dim=64, seed=0):
    """Random embeddings with a test image copied (plus noise) from a training image, and a same-patient pair."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32) + 5.0  # a shared offset, as every chest X-ray shares one
    split = np.array(["train"] * 200 + ["val"] * 40 + ["test"] * 60)
    patients = np.array([f"P{i}" for i in range(n)])
    X[250] = X[5] + rng.normal(scale=0.01, size=dim)  # test 250 ~ train 5: a leak across splits
    X[11] = X[10] + rng.normal(scale=0.01, size=dim)  # two images of one training patient
    patients[11] = patients[10]
    evaluated = split == "test"
    return X, split, patients, evaluated


def test_near_duplicates_across_splits_are_counted_per_split_pair():
    X, split, patients, evaluated = _planted()
    ids = [f"img{i}.png" for i in range(len(X))]
    found = audit.near_duplicates(X, split, evaluated, ids, patients, threshold=0.99)
    pairs = {tuple(entry["splits"]): (entry["pairs"], entry["same_patient"]) for entry in found["split_pairs"]}
    assert pairs[("test", "train")] == (1, 0) and pairs[("train", "train")] == (1, 1)
    assert sum(n for n, _ in pairs.values()) == 2
    assert found["evaluated_with_duplicate_in_training"] == 1 and found["n_evaluated"] == 60
    top = found["top_pairs"][0]
    assert top["ids"] == ["img5.png", "img250.png"] and top["splits"] == ["train", "test"]
    assert top["above_threshold"] and top["similarity"] > 0.99
    assert not found["top_pairs"][1]["above_threshold"] and len(found["top_pairs"]) == audit.TOP_PAIRS
    assert found["measure"] == audit.MEASURE and (found["n_rows"], found["dim"]) == (300, 64)


def test_blocks_change_nothing_and_match_the_full_similarity_matrix():
    X, split, patients, evaluated = _planted(seed=1)
    whole = audit.near_duplicates(X, split, evaluated, patient_id=patients, threshold=0.2, block_rows=4096)
    blocked = audit.near_duplicates(X, split, evaluated, patient_id=patients, threshold=0.2, block_rows=7)
    for key in ("split_pairs", "evaluated_with_duplicate_in_training"):
        assert whole[key] == blocked[key]
    assert [p["rows"] for p in whole["top_pairs"]] == [p["rows"] for p in blocked["top_pairs"]]
    centred = X - X.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    sims = unit @ unit.T
    upper = np.triu(np.ones_like(sims, dtype=bool), k=1)
    assert sum(entry["pairs"] for entry in whole["split_pairs"]) == int(np.sum((sims >= 0.2) & upper))
    cross = evaluated[:, None] != evaluated[None, :]
    assert whole["top_pairs"][0]["similarity"] == pytest.approx(float(sims[cross & upper].max()), abs=1e-5)


def test_constant_rows_are_near_duplicates_of_nothing():
    X = np.zeros((6, 4), dtype=np.float32)  # e.g. rows of images that could not be read
    found = audit.near_duplicates(X, ["train"] * 3 + ["test"] * 3, [False] * 3 + [True] * 3, threshold=0.5)
    assert all(entry["pairs"] == 0 for entry in found["split_pairs"])


def test_exact_duplicates_are_counted_per_split_pair_from_sha256():
    ids = ["a", "b", "c", "d", "e", "f"]
    split = ["train", "train", "test", "train", "val", "test"]
    sha = ["x", "x", "x", "y", "", ""]  # "" = not hashed: never a duplicate
    found = audit.exact_duplicates(ids, split, sha)
    assert (found["n_rows"], found["n_hashed"], found["duplicate_groups"], found["rows_in_groups"]) == (6, 4, 1, 3)
    assert found["split_pairs"] == [
        {"splits": ["test", "train"], "pairs": 2},
        {"splits": ["train", "train"], "pairs": 1},
    ]
    assert found["examples"] == [{"sha256": "x", "ids": ["a", "b", "c"], "splits": ["train", "train", "test"]}]


def test_file_hashes_read_the_files_or_say_why_not(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "one.png").write_bytes(b"same bytes")
    (tmp_path / "imgs" / "two.png").write_bytes(b"same bytes")
    sha, reason = audit.file_hashes(["imgs/one.png", "imgs/two.png", "imgs/gone.png"], tmp_path)
    assert reason == "" and sha[0] == sha[1] != "" and sha[2] == ""
    sha, reason = audit.file_hashes(["imgs/one.png"], tmp_path / "elsewhere")
    assert sha is None and "is not here" in reason


def _patient_heavy(seed=0):
    """Labels carried almost only by who the patient is: an image split leaks, a patient split does not."""
    rng = np.random.default_rng(seed)
    rows_X, rows_y, rows_g = [], [], []
    for p in range(60):
        label = p % 2
        centre = rng.normal(scale=3.0, size=10) + 0.3 * label
        for _ in range(4):
            rows_X.append(centre + rng.normal(scale=0.3, size=10))
            rows_y.append(label)
            rows_g.append(f"P{p}")
    return np.asarray(rows_X), np.asarray(rows_y), np.asarray(rows_g)


def test_image_level_cv_inflates_what_patient_level_cv_reports():
    from sklearn.base import clone

    X, y, groups = _patient_heavy()
    model = KNeighborsClassifier(n_neighbors=1)
    grouped = evaluate.grouped_splits(y, groups, 3, seed=0)
    oof = np.zeros(len(y))
    for fit_rows, score_rows in grouped:
        oof[score_rows] = clone(model).fit(X[fit_rows], y[fit_rows]).predict_proba(X[score_rows])[:, 1]
    levels = audit.split_levels(model, "binary", X, y, groups, grouped, oof, 3, seed=0)
    assert levels["folds"] == 3 and levels["n_fits"] == 3
    assert levels["patient"]["auc_mean"] < 0.7 < 0.95 < levels["image"]["auc_mean"]
    assert levels["inflation"] == pytest.approx(levels["image"]["auc_mean"] - levels["patient"]["auc_mean"])
    assert levels["image"]["validation_images_with_patient_in_training"] > 0.9
    assert len(levels["patient"]["fold_auc"]) == len(levels["image"]["fold_auc"]) == 3


def test_image_splits_ignore_patients_but_keep_the_class_balance():
    _, y, groups = _patient_heavy()
    folds = evaluate.image_splits(y, 3, seed=0)
    assert sorted(np.concatenate([rows for _, rows in folds]).tolist()) == list(range(len(y)))
    assert any(np.isin(groups[test], groups[train]).any() for train, test in folds)
    assert all(abs(y[test].mean() - 0.5) < 0.05 for _, test in folds)


@pytest.mark.parametrize("value", [0, 1.5, "x"])
def test_a_threshold_outside_zero_to_one_is_refused(value):
    with pytest.raises(ClassifyError, match=r"--near-duplicate-threshold must be a cosine similarity in \(0, 1\]"):
        audit.check_threshold(value)


@pytest.mark.realdata
def test_real_kermany_duplicate_across_a_bad_split_is_found_by_both_audits(tmp_path, kermany_train):
    """Kermany ships byte-identical files under two names; one put in test with its twin in train is flagged."""
    import json

    from featx.cli import main
    from featx.data.manifest import PATIENT_PARSERS

    picked = [p for label in ("NORMAL", "PNEUMONIA") for p in sorted((kermany_train / label).glob("*.jpeg"))[:60]]
    twin, leaked = kermany_train / "PNEUMONIA" / "person1159_virus_1944.jpeg", "PNEUMONIA/person1159_virus_1945.jpeg"
    lines = ["path,label,split,patient_id"]
    for index, path in enumerate(picked):
        split = "test" if index % 4 == 0 else "train"
        lines.append(
            f"{path.relative_to(kermany_train)},{path.parent.name},{split},{PATIENT_PARSERS['kermany'](path.name)}"
        )
    lines.append(f"{twin.relative_to(kermany_train)},PNEUMONIA,train,person1159")
    lines.append(f"{leaked},PNEUMONIA,test,person1159-mislabelled")  # the copy's patient id was lost: a leak
    manifest = tmp_path / "kermany.csv"
    manifest.write_text("\n".join(lines) + "\n")
    features, results = tmp_path / "features", tmp_path / "results"
    extract = ["extract", "--backbone", "pixels", "--manifest", str(manifest), "--data-root", str(kermany_train)]
    assert main([*extract, "--out", str(features)]) == 0
    classify = ["classify", "--features", str(features), "--out", str(results), "--classifier", "logreg", "--quick"]
    assert main([*classify, "--cv", "3", "--train-fraction", "0.25,1", "--efficiency-seeds", "2"]) == 0
    run = json.loads((results / "runs" / "pixels__avg__logreg.json").read_text())
    near, exact = run["audit"]["near_duplicates"], run["audit"]["exact_duplicates"]
    assert near["evaluated_with_duplicate_in_training"] >= 1
    top = near["top_pairs"][0]
    assert set(top["ids"]) == {str(twin.relative_to(kermany_train)), leaked} and top["similarity"] > 0.999
    assert {"splits": ["test", "train"], "pairs": 1} in exact["split_pairs"]
    assert [p["fraction"] for p in run["efficiency"]["points"]] == [0.25, 1.0]
    assert run["audit"]["split_levels"]["patient"]["auc_mean"] is not None
    document = (results / "report.html").read_text()
    assert "near_duplicates_pixels.png" in document and "Raw-pixel floor" in document


def _clustered_with_duplicates(n=6000, dim=48, n_pairs=300, seed=3):
    """Clustered embeddings (as real ones are) with planted near-duplicate pairs of varied closeness."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(40, dim))
    X = (centres[rng.integers(0, 40, size=n)] + rng.normal(size=(n, dim)) + 5.0).astype(np.float32)
    sources = rng.choice(n, size=n_pairs, replace=False)
    targets = rng.permutation(np.setdiff1d(np.arange(n), sources))[:n_pairs]
    noise = rng.uniform(0.0, 0.12, size=(n_pairs, 1))  # cosine from 1.0 down to about 0.99
    X[targets] = X[sources] + noise * rng.normal(size=(n_pairs, dim))
    split = np.where(np.arange(n) < int(0.8 * n), "train", "test")
    return X, split, split == "test"


def test_the_index_finds_what_the_exact_search_finds_recall_measured():
    X, split, evaluated = _clustered_with_duplicates()
    n_train = int((~evaluated).sum())
    order = np.argsort(evaluated, kind="stable")  # near_duplicates numbers rows training first
    mean = audit._column_mean(X, order, 4096)
    (exact_i, exact_j, _), (_, exact_best) = audit._exact_pairs(
        audit._unit_block(X, order, mean), 0.99, n_train, 12, 1024
    )
    (i, j, sims), (_, best_sim), details = audit._index_pairs(X, order, mean, 0.99, n_train, 12, 4096)
    truth = set(zip(exact_i.tolist(), exact_j.tolist()))
    found = set(zip(i.tolist(), j.tolist()))
    assert np.all(sims >= 0.99) and np.all(i < j) and len(found) == len(i)  # each pair once, none below
    assert len(truth) >= 250 and found <= truth
    recall = len(found) / len(truth)
    assert recall >= 0.98, recall
    assert details["cells"] == audit.index_cells(len(X)) > 1
    assert best_sim[0] == pytest.approx(exact_best[0], abs=1e-5)  # the closest cross pair is found
    # through the public function: the counts either way
    counts = {}
    for method in ("index", "exact"):
        found_by = audit.near_duplicates(X, split, evaluated, threshold=0.99, method=method)
        assert found_by["method"] == method
        counts[method] = (
            sum(entry["pairs"] for entry in found_by["split_pairs"]),
            found_by["evaluated_with_duplicate_in_training"],
        )
    assert counts["exact"][0] == len(truth)
    assert counts["index"][0] >= 0.98 * counts["exact"][0] and counts["index"][1] >= 0.98 * counts["exact"][1]


def test_small_sets_take_the_exact_search_and_rows_read_in_place():
    X, split, patients, evaluated = _planted()
    auto = audit.near_duplicates(X, split, evaluated, patient_id=patients, threshold=0.99)
    assert auto["method"] == "exact" and auto["index"] is None
    # rows= audits those rows of a bigger matrix without the caller copying them
    bigger = np.concatenate([np.zeros((5, X.shape[1]), np.float32), X])
    rows = np.arange(5, 5 + len(X))
    same = audit.near_duplicates(bigger, split, evaluated, patient_id=patients, threshold=0.99, rows=rows)
    assert same["split_pairs"] == auto["split_pairs"]
    assert [p["rows"] for p in same["top_pairs"]] == [p["rows"] for p in auto["top_pairs"]]
    forced = audit.near_duplicates(X, split, evaluated, patient_id=patients, threshold=0.99, exact_max_rows=10)
    assert forced["method"] == "index" and forced["split_pairs"] == auto["split_pairs"]
    assert forced["top_pairs"][0]["rows"] == auto["top_pairs"][0]["rows"]
    with pytest.raises(ClassifyError, match="method"):
        audit.near_duplicates(X, split, evaluated, method="lsh")
