"""`featx bench classify`: time the default CV searches on Kermany-sized synthetic embeddings.

It times exactly what `featx classify` runs for one run — `classify.stage.select_model`:
build_classifier's default grid, patient-grouped 5-fold splits, make_search's search with
its CPU split, the refit and the out-of-fold threshold — and reports fits, wall time, CV
and test AUC per classifier and in total. A benchmark reports numbers; it asserts nothing.
"""

from __future__ import annotations

import functools
import time

import numpy as np

KERMANY_PATIENTS_PER_ROW = 2846 / 5216  # Kermany 2018 train: ~2,846 patients for 5,216 images
POSITIVE_FRACTION = 0.74  # Kermany train: 3,875 PNEUMONIA of 5,216
GOAL_SECONDS = 90  # the three default searches on Kermany-sized embeddings, 2-core CPU


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


def bench_classify_command(
    classifiers, n_train, n_test, dim, n_jobs, console, cv=5, seed=0, repeat: int = 1
) -> list[dict]:
    """Time each classifier's default search (patient-grouped CV + refit + OOF threshold) and print a table.

    What is timed is `featx.classify.stage.select_model`, the very function `featx classify`
    runs for each run, on the same CPU split (`n_jobs` None: every usable core). `repeat` > 1
    runs each search that many times and reports the fastest (a shared machine's noise only
    ever adds time).
    """
    from rich.table import Table

    from featx.classify.evaluate import auc
    from featx.classify.registry import get_classifier, grid_size, planned_fits, search_strategy
    from featx.classify.scoring import predict_scores
    from featx.classify.stage import ClassifyConfig, describe_cpu_split, resolve_n_jobs, select_model
    from featx.progress import progress_bar

    specs = [get_classifier(name) for name in classifiers]  # unknown names fail before any work
    n_jobs = resolve_n_jobs(n_jobs)
    config = ClassifyConfig(cv=cv, seed=seed, n_jobs=n_jobs)
    X, y, groups, X_test, y_test = synthetic_embeddings(n_train, n_test, dim, seed=seed)
    classes = ["negative", "positive"]
    console.print(
        f"[bold]featx bench classify[/]: {len(y)} train rows x {dim} dims, {len(np.unique(groups))} patients, "
        f"{len(y_test)} test rows, {cv}-fold patient-grouped CV; {describe_cpu_split([s.name for s in specs], n_jobs, cv)}"
    )
    rows = []
    for spec in specs:
        grid = build_grid(spec.name)
        strategy = search_strategy(spec.name, grid, len(y))
        fits = planned_fits(spec.name, grid, len(y), cv)
        times = []
        selection = None
        for attempt in range(max(1, int(repeat))):
            with progress_bar(console, unit="fits", transient=True) as progress:
                bar = progress.add_task(f"{spec.name} ({attempt + 1}/{repeat})", total=fits)
                start = time.perf_counter()
                advance = functools.partial(progress.advance, bar)
                selection = select_model(spec.name, "binary", classes, X, y, groups, config, on_fits=advance)
                times.append(time.perf_counter() - start)
        assert selection is not None
        search = selection.search
        seconds = min(times)
        test_auc = auc("binary", y_test, predict_scores(search.best_estimator_, X_test, "binary"))
        row = {
            "classifier": spec.name,
            "strategy": strategy,
            "candidates": grid_size(grid),
            "fits": int(search.n_fits_),
            "seconds": seconds,
            "all_seconds": times,
            "refit_seconds": float(search.refit_time_),
            "fits_per_s": search.n_fits_ / seconds,
            "cv_auc": float(search.best_score_),
            "test_auc": test_auc,
            "best_params": search.best_params_,
        }
        rows.append(row)
        console.print(
            f"  {spec.name}: {strategy}, {row['candidates']} candidates, {row['fits']} fits (search + refit; "
            f"OOF scores from the search) in {seconds:.1f} s"
            + (f" (runs: {', '.join(f'{t:.1f}' for t in times)})" if len(times) > 1 else "")
            + f"; CV AUC {row['cv_auc']:.4f}, test AUC {test_auc:.4f}; best "
            + ", ".join(f"{k}={v}" for k, v in row["best_params"].items())
        )

    table = Table(title="classify benchmark (Kermany-sized synthetic embeddings)")
    for column in ("classifier", "search", "candidates", "fits", "time (s)", "fits/s", "CV AUC", "test AUC"):
        table.add_column(column, justify="left" if column in ("classifier", "search") else "right")
    for row in rows:
        table.add_row(
            row["classifier"],
            row["strategy"],
            str(row["candidates"]),
            str(row["fits"]),
            f"{row['seconds']:.1f}",
            f"{row['fits_per_s']:.2f}",
            f"{row['cv_auc']:.4f}",
            f"{row['test_auc']:.4f}",
        )
    total_fits = sum(row["fits"] for row in rows)
    total_seconds = sum(row["seconds"] for row in rows)
    table.add_row("total", "", "", str(total_fits), f"{total_seconds:.1f}", "", "", "")
    console.print(table)
    verdict = "within" if total_seconds <= GOAL_SECONDS else "over"
    console.print(f"Total {total_seconds:.1f} s for {len(rows)} classifiers: {verdict} the {GOAL_SECONDS}-second goal.")
    return rows


def build_grid(name: str) -> dict:
    """The default binary grid of a classifier (what featx classify searches)."""
    from featx.classify.registry import build_classifier

    return build_classifier(name, "binary", 2)[1]
