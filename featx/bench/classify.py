"""`featx bench classify`: time the default CV searches on Kermany-sized synthetic embeddings.

It runs exactly what `featx classify` runs for one backbone — build_classifier's default
grid, patient-grouped 5-fold splits, the AUC scorer and make_search's strategy per
classifier — and reports fits, fits/s and wall time per classifier and in total.
A benchmark reports numbers; it asserts nothing.
"""

from __future__ import annotations

import os
import time

import numpy as np

KERMANY_PATIENTS_PER_ROW = 2846 / 5216  # Kermany 2018 train: ~2,846 patients for 5,216 images
POSITIVE_FRACTION = 0.74  # Kermany train: 3,875 PNEUMONIA of 5,216


def synthetic_embeddings(n_train=5216, n_test=624, dim=2048, seed=0, signal=0.25, informative=128):
    """Pooled-CNN-like embeddings (non-negative, patient-correlated) with a modest class signal.

    Returns (X_train, y_train, groups_train, X_test, y_test) as float32 / int8 / str arrays.
    """
    rng = np.random.default_rng(seed)
    n_rows = n_train + n_test
    n_patients = max(2, int(round(n_rows * KERMANY_PATIENTS_PER_ROW)))
    patient_label = (rng.random(n_patients) < POSITIVE_FRACTION).astype(np.int8)
    # every patient has at least one image, the rest are spread at random (Kermany: 1-~10 per patient)
    patient_of_row = np.sort(
        np.concatenate([np.arange(n_patients), rng.integers(0, n_patients, size=n_rows - n_patients)])
    )
    patient_effect = rng.normal(scale=0.5, size=(n_patients, dim)).astype(np.float32)
    direction = np.zeros(dim, dtype=np.float32)
    direction[rng.choice(dim, size=min(informative, dim), replace=False)] = rng.choice(
        [-1.0, 1.0], size=min(informative, dim)
    )
    y = patient_label[patient_of_row]
    X = rng.normal(size=(n_rows, dim)).astype(np.float32)
    X += patient_effect[patient_of_row]
    X += signal * (y[:, None].astype(np.float32) - POSITIVE_FRACTION) * direction[None, :]
    np.maximum(X, 0.0, out=X)  # ReLU-pooled features are non-negative
    groups = np.array([f"p{p:05d}" for p in patient_of_row])
    # test rows: whole patients, as in a real split
    test_patients = np.unique(patient_of_row)[rng.permutation(len(np.unique(patient_of_row)))]
    is_test = np.zeros(n_rows, dtype=bool)
    for patient in test_patients:
        if is_test.sum() >= n_test:
            break
        is_test |= patient_of_row == patient
    return X[~is_test], y[~is_test], groups[~is_test], X[is_test], y[is_test]


def _n_fits(search, n_splits: int) -> int:
    if hasattr(search, "n_candidates_"):  # successive halving
        return int(sum(search.n_candidates_)) * n_splits + 1
    return len(search.cv_results_["params"]) * n_splits + 1


def bench_classify_command(classifiers, n_train, n_test, dim, n_jobs, console, cv=5, seed=0) -> list[dict]:
    """Time each classifier's default search (5-fold patient-grouped CV + refit) and print a table."""
    from rich.table import Table
    from sklearn.base import clone

    from featx.classify.evaluate import auc, grouped_splits
    from featx.classify.registry import build_classifier, get_classifier, grid_size, make_search, search_strategy
    from featx.classify.scoring import AUCScorer

    specs = [get_classifier(name) for name in classifiers]  # unknown names fail before any work
    X, y, groups, X_test, y_test = synthetic_embeddings(n_train, n_test, dim, seed=seed)
    console.print(
        f"[bold]featx bench classify[/]: {len(y)} train rows x {dim} dims, {len(np.unique(groups))} patients, "
        f"{len(y_test)} test rows, {cv}-fold patient-grouped CV, n_jobs={n_jobs}, {os.cpu_count()} cores"
    )
    splits = grouped_splits(y, groups, cv, seed)
    scorer = AUCScorer("binary")  # the scorer featx classify searches with
    rows = []
    for spec in specs:
        estimator, grid = build_classifier(spec.name, "binary", 2, seed=seed, n_jobs=1)
        strategy = search_strategy(spec.name, grid, len(y))
        search = make_search(spec.name, estimator, grid, splits, scorer, n_jobs=n_jobs, seed=seed)
        with console.status(f"{spec.name}: {grid_size(grid)} candidates, {strategy} search ..."):
            start = time.perf_counter()
            search.fit(X, y)
            search_seconds = time.perf_counter() - start
            # out-of-fold scores of the best candidate for the threshold, as featx classify computes them
            for fit_rows, _ in splits:
                clone(search.best_estimator_).fit(X[fit_rows], y[fit_rows])
            seconds = time.perf_counter() - start
        test_auc = auc("binary", y_test, search.predict_proba(X_test)[:, 1])
        fits = _n_fits(search, cv) + len(splits)
        row = {
            "classifier": spec.name,
            "strategy": strategy,
            "candidates": grid_size(grid),
            "fits": fits,
            "seconds": seconds,
            "search_seconds": search_seconds,
            "fits_per_s": fits / seconds,
            "cv_auc": float(search.best_score_),
            "test_auc": test_auc,
            "best_params": search.best_params_,
        }
        rows.append(row)
        console.print(
            f"  {spec.name}: {strategy}, {row['candidates']} candidates, {fits} fits (search + refit + {cv} OOF) "
            f"in {seconds:.1f} s (search {search_seconds:.1f} s) "
            f"({row['fits_per_s']:.2f} fits/s); CV AUC {row['cv_auc']:.3f}, test AUC {test_auc:.3f}"
        )

    table = Table(title="classify benchmark (Kermany-sized synthetic embeddings)")
    for column in (
        "classifier",
        "search",
        "candidates",
        "fits",
        "time (s)",
        "fits/s",
        "CV AUC",
        "test AUC",
        "best params",
    ):
        table.add_column(column, justify="left" if column in ("classifier", "search", "best params") else "right")
    for row in rows:
        table.add_row(
            row["classifier"],
            row["strategy"],
            str(row["candidates"]),
            str(row["fits"]),
            f"{row['seconds']:.1f}",
            f"{row['fits_per_s']:.2f}",
            f"{row['cv_auc']:.3f}",
            f"{row['test_auc']:.3f}",
            ", ".join(f"{k}={v}" for k, v in row["best_params"].items()),
        )
    total_fits = sum(row["fits"] for row in rows)
    total_seconds = sum(row["seconds"] for row in rows)
    table.add_row(
        "total",
        "",
        "",
        str(total_fits),
        f"{total_seconds:.1f}",
        f"{total_fits / max(total_seconds, 1e-9):.2f}",
        "",
        "",
        "",
    )
    console.print(table)
    verdict = "within" if total_seconds <= 300 else "over"
    console.print(f"Total {total_seconds:.1f} s for {len(rows)} classifiers: {verdict} the 5-minute goal.")
    return rows
