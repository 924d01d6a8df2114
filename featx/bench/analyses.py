"""`featx bench analyses`: what the audits and the data-efficiency curve cost on Kermany-sized embeddings.

It times the functions `featx classify` runs after each search, on the synthetic
embeddings of `featx bench classify` (5,216 train + 624 test rows x 2,048 dims by
default): the near-duplicate audit over every row, the exact-duplicate count, and per
classifier the image-level CV audit and the data-efficiency curve of one configuration
from the default grid (a search would pick one; which one changes the cost little next
to the number of fits). A benchmark reports numbers; it asserts nothing.
"""

from __future__ import annotations

import os
import time

import numpy as np

# One point of each default grid, standing in for the configuration a search would choose.
CONFIGURATIONS = {
    "logreg": {"clf__C": 0.01, "clf__class_weight": None},
    "xgboost": {
        "max_depth": 3,
        "learning_rate": 0.1,
        "n_estimators": 1000,
        "subsample": 0.8,
        "colsample_bytree": 0.2,
        "scale_pos_weight": 1.0,
    },
    "dense": {"hidden_units": 256, "dropout": 0.5, "learning_rate": 1e-3},
}


def bench_analyses_command(
    classifiers, fractions, seeds, n_train, n_test, dim, n_jobs, console, cv=5, seed=0, threshold=None
) -> dict:
    """Time the near- and exact-duplicate audits, then per classifier the image-level CV audit and the curve."""
    from rich.table import Table

    from featx.bench.classify import synthetic_embeddings
    from featx.classify import audit, efficiency
    from featx.classify.evaluate import auc, grouped_splits
    from featx.classify.registry import build_classifier, get_classifier
    from featx.classify.scoring import predict_scores

    specs = [get_classifier(name) for name in classifiers]  # unknown names fail before any work
    fractions = efficiency.check_fractions(fractions)
    threshold = audit.NEAR_DUPLICATE_THRESHOLD if threshold is None else audit.check_threshold(threshold)
    X, y, groups, X_test, y_test = synthetic_embeddings(n_train, n_test, dim, seed=seed)
    console.print(
        f"[bold]featx bench analyses[/]: {len(y)} train + {len(y_test)} test rows x {dim} dims, "
        f"{len(np.unique(groups))} train patients, fractions {list(fractions)} x {seeds} seeds, "
        f"n_jobs={n_jobs}, {os.cpu_count()} cores"
    )
    X_all = np.concatenate([X, X_test])
    split = np.array(["train"] * len(X) + ["test"] * len(X_test))
    with console.status(f"near duplicates over {len(X_all)} x {dim} ..."):
        near = audit.near_duplicates(X_all, split, split == "test", threshold=threshold)
    ids = [f"img{i:05d}.png" for i in range(len(X_all))]
    fake_sha = [f"{i % (len(X_all) - 10):064x}" for i in range(len(X_all))]  # ten planted duplicate files
    started = time.perf_counter()
    exact = audit.exact_duplicates(ids, split, fake_sha)
    exact_seconds = time.perf_counter() - started
    console.print(
        f"  near duplicates: {near['seconds']:.2f} s for {len(X_all):,} x {dim:,} "
        f"({len(X_all) * (len(X_all) - 1) // 2:,} pairs; {sum(p['pairs'] for p in near['split_pairs'])} at or above "
        f"{threshold}); exact duplicates from sha256: {exact_seconds:.3f} s ({exact['duplicate_groups']} groups)"
    )

    splits = grouped_splits(y, groups, cv, seed)
    rows = []
    for spec in specs:
        estimator, _ = build_classifier(spec.name, "binary", 2, seed=seed, n_jobs=1)
        estimator.set_params(**CONFIGURATIONS.get(spec.name, {}))
        with console.status(f"{spec.name}: refit, patient-level out-of-fold scores, image-level CV, curve ..."):
            started = time.perf_counter()
            fitted = estimator.fit(X, y)
            run_auc = auc("binary", y_test, predict_scores(fitted, X_test, "binary"))
            oof = np.zeros(len(y))
            for fit_rows, score_rows in splits:
                model = build_classifier(spec.name, "binary", 2, seed=seed, n_jobs=1)[0]
                model.set_params(**CONFIGURATIONS.get(spec.name, {}))
                oof[score_rows] = predict_scores(model.fit(X[fit_rows], y[fit_rows]), X[score_rows], "binary")
            run_seconds = time.perf_counter() - started
            levels = audit.split_levels(fitted, "binary", X, y, groups, splits, oof, cv, seed, n_jobs)
            curve = efficiency.efficiency_curve(
                fitted, "binary", X, y, groups, X_test, y_test, fractions, seeds, seed, run_auc, n_jobs
            )
        rows.append(
            {
                "classifier": spec.name,
                "run_seconds": run_seconds,
                "image_cv_seconds": levels["seconds"],
                "image_cv_fits": levels["n_fits"],
                "curve_seconds": curve["seconds"],
                "curve_fits": curve["n_fits"],
                "curve": [(p["n_patients_mean"], p["auc_mean"], p["auc_std"]) for p in curve["points"]],
            }
        )
    table = Table(title="audits and data-efficiency curve (Kermany-sized synthetic embeddings)")
    for column in ("classifier", "refit + OOF (s)", "image CV (s, fits)", "curve (s, fits)", "curve: patients -> AUC"):
        table.add_column(column, justify="left" if column in ("classifier", "curve: patients -> AUC") else "right")
    for row in rows:
        curve_text = "; ".join(
            f"{n:.0f} -> {m:.3f}" + ("" if s is None or s == 0 else f"±{s:.3f}") for n, m, s in row["curve"]
        )
        table.add_row(
            row["classifier"],
            f"{row['run_seconds']:.1f}",
            f"{row['image_cv_seconds']:.1f} ({row['image_cv_fits']})",
            f"{row['curve_seconds']:.1f} ({row['curve_fits']})",
            curve_text,
        )
    console.print(table)
    return {"near_duplicates": near, "exact_seconds": exact_seconds, "classifiers": rows}
