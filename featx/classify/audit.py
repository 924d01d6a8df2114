"""Audits of what a run was evaluated on: duplicate images across its splits, and how much an image split inflates CV.

Three checks, each stored in the run JSON (`audit`) and shown in the report:

- near duplicates: pairs of images whose embeddings (mean-centred, so that the shared
  "it is a chest X-ray" direction does not make every pair similar) have a cosine similarity
  of at least a threshold, counted per split pair, with the evaluated images closest to a training
  image listed. Up to EXACT_MAX_ROWS rows every pair is compared (one (block, N) product at a time);
  above, faiss k-means cuts the rows into cells of about INDEX_CELL_ROWS and each cell is compared
  with its INDEX_NPROBE nearest cells only (linear in the rows; recall measured in the tests);
- exact duplicates: rows whose files have the same sha256, counted per split pair;
- split levels: the run's chosen configuration cross-validated twice on the training rows,
  with patient-grouped folds (what featx does) and with plain image folds (what a random image
  split does), so the report can show how much the second would have inflated the result.

The splits audited are the run's own: manifest splits, with the held-out patients named
"test" when stage two held them out.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from featx.classify import evaluate
from featx.classify.scoring import predict_scores
from featx.errors import ClassifyError, ManifestError
from featx.files import file_sha256

# Calibrated on the 5,216 Kermany training images with the 32-px pixels embedding: the 28 byte-identical pairs
# score 1.000, the closest pair of distinct patients 0.984; no pair lies between.
NEAR_DUPLICATE_THRESHOLD = 0.99
TOP_PAIRS = 12
BLOCK_ROWS = 1024
# Near duplicates: every pair up to this many audited rows (same pairs as ever); above it a faiss inverted-file
# index (linear in the rows; measured recall in tests/test_audit.py).
EXACT_MAX_ROWS = 10_000
INDEX_CELL_ROWS = 500  # rows per inverted-file cell
INDEX_NPROBE = 4  # cells each row is compared with (a near duplicate sits in its row's own cell or next door)
INDEX_TRAIN_PER_CELL = 40  # k-means training rows per cell (faiss asks for 39)
INDEX_KMEANS_ITERATIONS = 10
MAX_HASH_BYTES = 4 * 1024**3  # above this, hashing every image in stage two would cost minutes: skipped, said why
MEASURE = "cosine similarity of mean-centred embeddings"


def check_threshold(threshold) -> float:
    """The near-duplicate threshold; ClassifyError unless it is a number in (0, 1]."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise ClassifyError(f"--near-duplicate-threshold must be a cosine similarity in (0, 1]. Got {threshold!r}.")
    return value


def _split_pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


# ---------------------------------------------------------------- near duplicates

NEAR_METHODS = ("auto", "exact", "index")


def _faiss():
    """The faiss module, or None where it is not installed (the exact search then runs at every size)."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is an install requirement
        return None
    return faiss


def _unit_block(X, rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows of X, mean-centred and scaled to unit length, as a new float32 block (a constant row stays zero)."""
    block = np.asarray(X[rows], dtype=np.float32)  # fancy indexing: a new array, scaled in place below
    block -= mean
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    block /= np.where(norms > 0, norms, np.inf)[:, None]
    return block


def _column_mean(X, rows: np.ndarray, block_rows: int) -> np.ndarray:
    total = np.zeros(X.shape[1], dtype=np.float64)
    for start in range(0, len(rows), block_rows):
        total += np.asarray(X[rows[start : start + block_rows]], dtype=np.float32).sum(axis=0, dtype=np.float64)
    return (total / max(1, len(rows))).astype(np.float32)


def _exact_pairs(unit: np.ndarray, threshold: float, n_train: int, top: int, block_rows: int):
    """Every pair (i < j) at or above the threshold, one (block, N) product at a time, and the closest
    training-vs-evaluated pairs: (i, j, similarity) arrays and (best_rows (k, 2), best_sim (k,))."""
    n = len(unit)
    found_i, found_j, found_s = [], [], []
    best_sim = np.empty(0, dtype=np.float32)
    best_rows = np.empty((0, 2), dtype=np.int64)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        sims = unit[start:stop] @ unit[start:].T  # (b, N - start): each pair once, j > i
        width = stop - start
        sims[:, :width][np.tril_indices(width)] = -np.inf
        i, j = np.nonzero(sims >= threshold)
        found_i.append(i + start)
        found_j.append(j + start)
        found_s.append(sims[i, j])
        # the closest training-vs-evaluated pairs of this block, whatever the threshold
        cross = sims[: max(0, min(stop, n_train) - start), max(0, n_train - start) :]
        k = min(top, cross.size)
        if k:
            flat = np.argpartition(cross, cross.size - k, axis=None)[-k:]
            rows = np.stack([flat // cross.shape[1] + start, flat % cross.shape[1] + max(start, n_train)], axis=1)
            best_sim = np.concatenate([best_sim, cross.ravel()[flat]])
            best_rows = np.concatenate([best_rows, rows])
            keep = np.argsort(-best_sim, kind="stable")[:top]
            best_sim, best_rows = best_sim[keep], best_rows[keep]
    if not found_i:  # no rows
        return (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)), (best_rows, best_sim)
    pairs = (np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s))
    return pairs, (best_rows, best_sim)


def index_cells(n: int) -> int:
    """Inverted-file cells of the approximate index: about INDEX_CELL_ROWS rows each, so a query scans
    INDEX_NPROBE cells of a fixed size and the search grows linearly with the rows."""
    return max(1, n // INDEX_CELL_ROWS)


def _index_pairs(X, rows, mean, threshold: float, n_train: int, top: int, block_rows: int, seed: int = 0):
    """The pairs and closest cross pairs of _exact_pairs, on an inverted file: faiss k-means splits the unit rows
    into cells of about INDEX_CELL_ROWS rows, and each cell's rows are compared (one BLAS product per cell)
    with the rows of its INDEX_NPROBE nearest cells only, itself included. A pair whose two rows sit in cells
    that are not among each other's nearest is missed; near duplicates sit in one cell or next door.

    Returns ((i, j, similarity), (best_rows, best_sim), details); rows are positions in `rows`.
    """
    faiss = _faiss()
    assert faiss is not None
    n, dim = len(rows), X.shape[1]
    cells = index_cells(n)
    unit = np.empty((n, dim), dtype=np.float32)  # the one float32 copy of the audited rows, unit length
    for start in range(0, n, block_rows):
        unit[start : start + block_rows] = _unit_block(X, rows[start : start + block_rows], mean)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, INDEX_TRAIN_PER_CELL * cells), replace=False))
    kmeans = faiss.Kmeans(dim, cells, niter=INDEX_KMEANS_ITERATIONS, seed=seed, spherical=True)
    kmeans.cp.min_points_per_centroid = 1  # a small forced index trains on fewer rows, quietly
    kmeans.cp.max_points_per_centroid = INDEX_TRAIN_PER_CELL
    kmeans.train(unit[sample])
    centroids = faiss.IndexFlatIP(dim)
    centroids.add(kmeans.centroids)
    cell = np.empty(n, dtype=np.int64)
    for start in range(0, n, block_rows):
        cell[start : start + block_rows] = centroids.search(unit[start : start + block_rows], 1)[1][:, 0]
    nprobe = min(cells, INDEX_NPROBE)
    nearest = centroids.search(kmeans.centroids, nprobe)[1]  # (cells, nprobe): each cell's nearest, itself first
    by_cell = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[by_cell], np.arange(cells + 1))
    members = [by_cell[bounds[c] : bounds[c + 1]] for c in range(cells)]
    threshold32 = np.float32(threshold)
    found_i, found_j, found_s = [], [], []
    cand_sim, cand_rows = [], []
    for c in range(cells):
        own = members[c]
        if not len(own):
            continue
        others = np.concatenate([members[b] for b in nearest[c] if b >= 0])
        sims = unit[own] @ unit[others].T
        i, j = np.nonzero(sims >= threshold32)
        a, b = own[i], others[j]
        keep = a != b
        found_i.append(np.minimum(a, b)[keep])
        found_j.append(np.maximum(a, b)[keep])
        found_s.append(sims[i, j][keep])
        evaluated_own, training_others = own >= n_train, others < n_train
        if top and evaluated_own.any() and training_others.any():
            cross = sims[np.ix_(evaluated_own, training_others)]
            k = min(top, cross.size)
            flat = np.argpartition(cross, cross.size - k, axis=None)[-k:]
            cand_sim.append(cross.ravel()[flat])
            cand_rows.append(
                np.stack(
                    [others[training_others][flat % cross.shape[1]], own[evaluated_own][flat // cross.shape[1]]], 1
                )
            )
    del unit
    i = np.concatenate(found_i) if found_i else np.empty(0, np.int64)
    j = np.concatenate(found_j) if found_j else np.empty(0, np.int64)
    s = np.concatenate(found_s) if found_s else np.empty(0, np.float32)
    unique = np.unique(i * n + j, return_index=True)[1]  # a pair seen from both of its cells once
    best_sim = np.concatenate(cand_sim) if cand_sim else np.empty(0, dtype=np.float32)
    best_rows = np.concatenate(cand_rows) if cand_rows else np.empty((0, 2), dtype=np.int64)
    if len(best_sim):
        pair_key = best_rows[:, 0] * n + best_rows[:, 1]
        first = np.unique(pair_key, return_index=True)[1]
        best_sim, best_rows = best_sim[first], best_rows[first]
        keep = np.lexsort((best_rows[:, 1], best_rows[:, 0], -best_sim))[:top]
        best_sim, best_rows = best_sim[keep], best_rows[keep]
    details = {"cells": int(cells), "probed_cells": int(nprobe), "trained_on_rows": int(len(sample))}
    return (i[unique], j[unique], s[unique]), (best_rows.astype(np.int64), best_sim), details


def near_duplicates(
    X,
    split: Sequence[str],
    evaluated,
    ids: Sequence[str] | None = None,
    patient_id: Sequence[str] | None = None,
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    top: int = TOP_PAIRS,
    block_rows: int = BLOCK_ROWS,
    *,
    rows=None,
    method: str = "auto",
    exact_max_rows: int = EXACT_MAX_ROWS,
) -> dict:
    """Near-duplicate pairs among the rows of X, counted per split pair.

    Parameters
    ----------
    X : (M, D) embeddings; the audited rows are `rows` of it (every row when None).
    split : (N,) split name of each audited row.
    evaluated : (N,) bool, True for the rows the run was tested on; the others trained it.
    ids, patient_id : (N,) row ids and patient ids, for the listed pairs and the same-patient counts.
    threshold : cosine similarity (after mean-centring) at or above which a pair is a near duplicate.
    top : how many of the evaluated-vs-training pairs with the highest similarity to list,
        above the threshold or not (so a clean audit still shows what "closest" looks like).
    rows : (N,) indices into X of the audited rows, read from X block by block (no copy of X[rows]).
    method : "exact" (every pair, one (block, N) product at a time: quadratic), "index" (a faiss
        inverted-file index: each row is compared with the rows of its INDEX_NPROBE nearest cells only,
        linear in N) or "auto": exact up to `exact_max_rows` rows, the index above (exact everywhere
        where faiss is not installed).

    Returns
    -------
    dict
        {measure, method, index (cells, probed_cells, trained_on_rows | None), threshold, n_rows, dim,
        split_pairs [{splits, pairs, same_patient}], n_evaluated, evaluated_with_duplicate_in_training,
        top_pairs [{rows, ids, splits, patients, similarity, above_threshold}], seconds}
    """
    if method not in NEAR_METHODS:
        raise ClassifyError(f"The near-duplicate 'method' must be one of {list(NEAR_METHODS)}. Got {method!r} instead.")
    started = time.perf_counter()
    evaluated = np.asarray(evaluated, dtype=bool)
    audited = np.arange(len(X)) if rows is None else np.asarray(rows, dtype=np.int64)
    # training rows first, evaluated rows last: a pair (i, j > i) crosses sides only when i trains and j is
    # evaluated, so in every block the cross pairs are one contiguous slice (rows < n_train, columns >= n_train)
    order = np.argsort(evaluated, kind="stable")
    n_train = int(np.count_nonzero(~evaluated))
    n = len(audited)
    dim = int(X.shape[1]) if np.ndim(X) == 2 else 0
    ordered_rows = audited[order]
    mean = _column_mean(X, ordered_rows, block_rows) if n else np.zeros(dim, np.float32)
    faiss_here = (method == "exact" or (method == "auto" and n <= exact_max_rows)) or _faiss() is not None
    use_index = method == "index" or (method == "auto" and n > exact_max_rows and faiss_here)
    if use_index and not faiss_here:
        raise ClassifyError("The near-duplicate 'method' 'index' needs faiss (pip install faiss-cpu).")
    index_details = None
    if use_index and n > 1:
        (i_rows, j_rows, _), (best_rows, best_sim), index_details = _index_pairs(
            X, ordered_rows, mean, threshold, n_train, top, max(block_rows, 4096)
        )
        how = "index"
    else:
        unit = _unit_block(X, ordered_rows, mean)  # the one float32 copy of the audited rows
        # a block's (b, N) similarities stay within an eighth of the matrix: b <= D / 8 (at least 32 rows)
        block = max(32, min(block_rows, dim // 8))
        (i_rows, j_rows, _), (best_rows, best_sim) = _exact_pairs(unit, threshold, n_train, top, block)
        del unit
        how = "exact"
    names, split_code = np.unique(np.asarray(split).astype(str)[order], return_inverse=True)
    patient_code = None
    if patient_id is not None:
        patient_code = np.unique(np.asarray(patient_id).astype(str)[order], return_inverse=True)[1]
    pairs = np.zeros((len(names), len(names)), dtype=np.int64)
    same_patient = np.zeros_like(pairs)
    low = np.minimum(split_code[i_rows], split_code[j_rows])
    high = np.maximum(split_code[i_rows], split_code[j_rows])
    np.add.at(pairs, (low, high), 1)
    if patient_code is not None:
        np.add.at(same_patient, (low, high), (patient_code[i_rows] == patient_code[j_rows]).astype(np.int64))
    evaluated_hit = np.zeros(n, dtype=bool)
    evaluated_hit[j_rows[(i_rows < n_train) & (j_rows >= n_train)]] = True
    best_rows = order[best_rows]  # back to the caller's row numbers; the training row is first
    split = np.asarray(split).astype(str)
    ids = np.asarray(ids if ids is not None else [str(i) for i in range(n)]).astype(str)
    split_pairs = [
        {
            "splits": [str(names[a]), str(names[b])],
            "pairs": int(pairs[a, b]),
            "same_patient": int(same_patient[a, b]) if patient_code is not None else None,
        }
        for a in range(len(names))
        for b in range(a, len(names))
    ]
    top_pairs = []
    for (a, b), similarity in zip(best_rows.tolist(), best_sim.tolist()):
        top_pairs.append(
            {
                "rows": [a, b],
                "ids": [str(ids[a]), str(ids[b])],
                "splits": [str(split[a]), str(split[b])],
                "patients": [str(patient_id[a]), str(patient_id[b])] if patient_id is not None else None,
                "similarity": float(similarity),
                "above_threshold": bool(similarity >= threshold),
            }
        )
    return {
        "measure": MEASURE,
        "method": how,
        "index": index_details,
        "threshold": float(threshold),
        "n_rows": int(n),
        "dim": dim,
        "split_pairs": split_pairs,
        "n_evaluated": int(evaluated.sum()),
        "evaluated_with_duplicate_in_training": int(evaluated_hit.sum()),
        "top_pairs": top_pairs,
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------- exact duplicates


def file_hashes(ids: Sequence[str], data_root) -> tuple[np.ndarray | None, str]:
    """(sha256 per row, "" for a missing file) of the images under data_root, or (None, why not)."""
    from featx.data.manifest import resolve_path

    root = Path(str(data_root)) if data_root else None
    if root is None or not root.is_dir():
        return None, f"the data root {str(data_root)!r} recorded in the cache is not here"
    try:
        paths = [resolve_path(root, str(rel)) for rel in ids]
    except ManifestError as error:
        return None, str(error)
    present = [path.is_file() for path in paths]
    if not any(present):
        return None, f"none of the images are under {root}"
    total = sum(path.stat().st_size for path, here in zip(paths, present) if here)
    if total > MAX_HASH_BYTES:
        return None, (
            f"hashing {total / 1024**3:.1f} GiB of images here would take minutes; put a sha256 column in the "
            "manifest and re-extract, or run `featx manifest check --sha256`"
        )
    return np.asarray([file_sha256(path) if here else "" for path, here in zip(paths, present)]), ""


def exact_duplicates(ids: Sequence[str], split: Sequence[str], sha256: Sequence[str], examples: int = 10) -> dict:
    """Rows whose files have the same sha256 ("" = unknown, left out), counted per split pair.

    Returns
    -------
    dict
        {n_rows, n_hashed, duplicate_groups, rows_in_groups, split_pairs [{splits, pairs}],
        examples [{sha256, ids, splits}] (groups spanning splits first)}
    """
    ids = np.asarray(ids).astype(str)
    split = np.asarray(split).astype(str)
    sha256 = np.asarray(sha256).astype(str)
    groups: dict[str, list[int]] = defaultdict(list)
    for row, digest in enumerate(sha256):
        if digest:
            groups[digest].append(row)
    duplicated = {digest: rows for digest, rows in groups.items() if len(rows) > 1}
    counts: Counter = Counter()
    for rows in duplicated.values():
        per_split = Counter(split[rows].tolist())
        names = sorted(per_split)
        for a_index, a in enumerate(names):
            counts[(a, a)] += per_split[a] * (per_split[a] - 1) // 2
            for b in names[a_index + 1 :]:
                counts[(a, b)] += per_split[a] * per_split[b]
    ordered = sorted(duplicated.items(), key=lambda item: (len(set(split[item[1]])) == 1, item[1][0]))
    return {
        "n_rows": len(ids),
        "n_hashed": int(np.count_nonzero(sha256 != "")),
        "duplicate_groups": len(duplicated),
        "rows_in_groups": int(sum(len(rows) for rows in duplicated.values())),
        "split_pairs": [{"splits": list(pair), "pairs": int(n)} for pair, n in sorted(counts.items()) if n],
        "examples": [
            {"sha256": str(digest), "ids": ids[rows].tolist(), "splits": split[rows].tolist()}
            for digest, rows in ordered[:examples]
        ],
    }


# ---------------------------------------------------------------- the data audit of one cache


def data_audit(
    features,
    train_rows,
    test_rows,
    test_source: str,
    threshold: float = NEAR_DUPLICATE_THRESHOLD,
    hashes: dict | None = None,
    near_skipped: str | None = None,
) -> dict:
    """Near and exact duplicates across the splits one run uses: the data part of its run JSON's `audit`.

    `features` is a store.FeatureSet; the rows audited are the run's training and test rows
    (failed images are not in them). Exact duplicates come from the cache's per-image sha256
    (`image_sha256`) when it has them, else from hashing the files under its data root;
    `hashes` memoises those across the caches of one command, keyed by (data_root, ids).
    `near_skipped`: why the rows are not image embeddings to compare (the metadata floor's); the
    near-duplicate audit is then None and the reason is kept as `near_duplicates_skipped`.
    """
    rows = np.concatenate([np.asarray(train_rows), np.asarray(test_rows)]).astype(np.int64)
    evaluated = np.zeros(len(rows), dtype=bool)
    evaluated[len(train_rows) :] = True
    split = np.asarray(features.split).astype(str)[rows]
    if test_source == "held_out_patients":
        split = np.where(evaluated, "test", split)
    ids = np.asarray(features.ids).astype(str)[rows]
    patients = np.asarray(features.patient_id).astype(str)[rows]
    near = None
    if near_skipped is None:
        near = near_duplicates(features.X, split, evaluated, ids, patients, threshold=threshold, rows=rows)
    data_root = str(features.attrs.get("data_root", ""))

    started = time.perf_counter()
    all_sha256 = features.image_sha256  # the cache's /sha256, written while extracting
    source = "cache"
    if all_sha256 is None or not np.any(np.asarray(all_sha256).astype(str) != ""):
        source = "image files"  # a cache without per-image hashes: hash the files under its data root
        key = (data_root, tuple(np.asarray(features.ids).astype(str).tolist()))
        if hashes is not None and key in hashes:
            all_sha256, reason = hashes[key]
        else:
            all_sha256, reason = file_hashes(key[1], data_root)
            if hashes is not None:
                hashes[key] = (all_sha256, reason)
    if all_sha256 is None:
        exact: dict = {"source": None, "skipped": reason}
    else:
        sha256 = np.asarray(all_sha256).astype(str)[rows]
        exact = {"source": source, "skipped": None, **exact_duplicates(ids, split, sha256)}
    exact["seconds"] = time.perf_counter() - started
    found = {"data_root": data_root, "pooling": features.pooling, "near_duplicates": near, "exact_duplicates": exact}
    if near_skipped is not None:
        found["near_duplicates_skipped"] = near_skipped
    return found


# ---------------------------------------------------------------- patient-level vs image-level CV


def _fold_scores(model, X, y, fit_rows, score_rows, task):
    return predict_scores(model.fit(X[fit_rows], y[fit_rows]), X[score_rows], task)


def _fold_aucs(task, y, score, splits) -> list[float | None]:
    aucs: list[float | None] = []
    for _, rows in splits:
        try:
            aucs.append(evaluate.auc(task, y[rows], score[rows]))
        except ClassifyError:  # a fold holding one class
            aucs.append(None)
    return aucs


def _level(method: str, aucs: list[float | None]) -> dict:
    finite = [value for value in aucs if value is not None]
    return {
        "method": method,
        "fold_auc": aucs,
        "auc_mean": float(np.mean(finite)) if finite else None,
        "auc_std": float(np.std(finite)) if finite else None,
    }


def split_levels(
    estimator,
    task: str,
    X,
    y,
    groups,
    grouped: Sequence,
    oof_score,
    n_splits: int,
    seed: int = 0,
    n_jobs: int = 1,
    rows=None,
) -> dict:
    """CV AUC of the run's chosen configuration with patient-grouped folds and with plain image folds.

    The patient-level figure reuses the run's out-of-fold scores on its grouped folds (`grouped`,
    `oof_score`): no new fit. The image-level one fits `estimator`'s parameters once per plain
    stratified image fold (same number of folds and seed). `rows`: the rows the grouped folds hold out
    when they cover a subsample (stage two's search scheme at scale); the image folds are drawn among them.

    Returns
    -------
    dict
        {folds, patient {method, fold_auc, auc_mean, auc_std}, image {..., validation_images_with_patient_in_training},
        inflation (image mean - patient mean), n_fits, seconds}
    """
    from sklearn.base import clone

    started = time.perf_counter()
    y = np.asarray(y)
    groups = np.asarray(groups).astype(str)
    oof_score = np.asarray(oof_score)
    patient = _level("StratifiedGroupKFold (patients never cross folds)", _fold_aucs(task, y, oof_score, grouped))
    subset = np.arange(len(y)) if rows is None else np.asarray(rows)
    folds = [(subset[fit], subset[held]) for fit, held in evaluate.image_splits(y[subset], n_splits, seed)]
    scores = Parallel(n_jobs=n_jobs)(
        delayed(_fold_scores)(clone(estimator), X, y, fit_rows, score_rows, task) for fit_rows, score_rows in folds
    )
    image_score = np.zeros_like(oof_score, dtype=np.float64)
    for (_, score_rows), fold_score in zip(folds, scores):
        image_score[score_rows] = fold_score
    image = _level("StratifiedKFold (images, patients ignored)", _fold_aucs(task, y, image_score, folds))
    shared = [np.isin(groups[score_rows], groups[fit_rows]).mean() for fit_rows, score_rows in folds]
    image["validation_images_with_patient_in_training"] = float(np.mean(shared))
    inflation = None
    if image["auc_mean"] is not None and patient["auc_mean"] is not None:
        inflation = image["auc_mean"] - patient["auc_mean"]
    return {
        "folds": int(n_splits),
        "patient": patient,
        "image": image,
        "inflation": inflation,
        "n_fits": len(folds),
        "seconds": time.perf_counter() - started,
    }
