"""`featx bench scale`: stage two at the field's scale (10^5-10^6 rows), per phase and in peak memory.

For each row count it writes a synthetic cache through the real cache writer (`store.open_writer`:
chunked, checksummed, hashed on finish), then runs `featx classify` on it in a fresh child process
(the same `results.finish.classify_command`, defaults unless told otherwise) and reads back from the
run records the seconds of each phase: loading, the duplicate audits (near: exact or index; exact),
each classifier's search, refit and image-level CV audit, and the leaderboard/report; and the child's
peak resident memory (VmHWM) next to the float32 matrix, so growth between sizes shows as a ratio, and
the peak summed PSS of the child and its fit workers (sampled), where parallel fits and a refit run.

The cache mimics the public chest X-ray sets: 2 images per patient, 20% of patients in test, rows in
split order (train first); binary, or `labels` labels for a multi-label task (NIH: 14-15).
A benchmark reports numbers; it asserts nothing.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

IMAGES_PER_PATIENT = 2
TEST_FRACTION = 0.2
CHUNK_ROWS = 8192


def _labels_of(patients: np.ndarray, n_labels: int, seed: int) -> np.ndarray:
    """Each patient's label (binary, ~30% positive) or 0/1 labels (multi-label, prevalence 5-30%), by patient id."""
    rng = np.random.default_rng([seed, 7])
    if n_labels <= 1:
        draws = np.random.default_rng([seed, 11]).random(int(patients.max()) + 1)
        return (draws[patients] < 0.3).astype(np.int8)
    prevalence = rng.uniform(0.05, 0.3, size=n_labels)
    draws = np.random.default_rng([seed, 11]).random((int(patients.max()) + 1, n_labels))
    return (draws[patients] < prevalence).astype(np.int8)


def write_synthetic_cache(path, n_rows: int, dim: int, n_labels: int = 1, seed: int = 0) -> Path:
    """A complete featx cache of `n_rows` x `dim` float32 embeddings ("avg" pooling), written in chunks through
    store.open_writer; memory stays a chunk's whatever n_rows is."""
    from featx.extract import store

    path = Path(path)
    n_patients = (n_rows + IMAGES_PER_PATIENT - 1) // IMAGES_PER_PATIENT
    patients = np.arange(n_rows) // IMAGES_PER_PATIENT
    n_train_patients = int(round(n_patients * (1 - TEST_FRACTION)))
    split = np.where(patients < n_train_patients, "train", "test")
    y = _labels_of(patients, n_labels, seed)
    classes = ["negative", "positive"] if n_labels <= 1 else [f"finding{k:02d}" for k in range(n_labels)]
    rng = np.random.default_rng(seed)
    directions = np.zeros((max(1, n_labels), dim), dtype=np.float32)
    for k in range(len(directions)):
        chosen = rng.choice(dim, size=min(64, dim), replace=False)
        directions[k, chosen] = rng.choice([-1.0, 1.0], size=len(chosen))
    attrs = {
        "featx_version": "bench",
        "backbone": path.stem,
        "weights": "random",
        "weights_sha256": "0" * 64,
        "weights_seed": seed,
        "image_size": [224, 224],
        "resize_mode": "stretch",
        "preprocess": "none",
        "manifest_sha256": f"{n_rows:064x}",
        "data_root": "",
        "dicom_window": store.NO_DICOM,
        "extract_args": "featx bench scale (synthetic)",
    }
    writer = store.open_writer(
        path,
        attrs=attrs,
        ids=[f"p{p:07d}/img{r % IMAGES_PER_PATIENT}.png" for r, p in enumerate(patients)],
        labels=y,
        classes=classes,
        split=split.tolist(),
        patient_id=[f"p{p:07d}" for p in patients],
        widths={"avg": dim},
        force=True,
        batch_rows=CHUNK_ROWS,
    )
    assert writer is not None
    with writer:
        for start in range(0, n_rows, CHUNK_ROWS):
            stop = min(n_rows, start + CHUNK_ROWS)
            chunk = np.random.default_rng([seed, start]).normal(size=(stop - start, dim)).astype(np.float32)
            # a patient's images share an offset: the first row of each pair sets it for both
            effect = np.random.default_rng([seed, start, 1]).normal(scale=0.5, size=(stop - start, dim))
            chunk += effect.astype(np.float32)[(np.arange(stop - start) // IMAGES_PER_PATIENT) * IMAGES_PER_PATIENT]
            labels = y[start:stop].reshape(stop - start, -1).astype(np.float32)
            chunk += 0.25 * (labels - labels.mean()) @ directions
            np.maximum(chunk, 0.0, out=chunk)
            digests = [f"{row:064x}" for row in range(start, stop)]
            writer.write(start, {"avg": chunk}, np.ones(stop - start, dtype=bool), sha256=digests)
        writer.finish()
    return path


def _peak_rss_mib() -> float:
    from featx.bench.extract import peak_rss_mib

    return peak_rss_mib()


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (the fit workers, their own children), from /proc's children lists."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            queue.append(child)
    return found


def _pss_mib(pid: int) -> float:
    """A process's proportional set size in MiB: its private pages plus its share of pages it shares (the
    matrix the fit workers memory-map is counted once across them, not once per worker); 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeMemory:
    """Samples the summed PSS of this process and every process below it (the parallel fits run in worker
    processes, whose memory this process's own peak RSS does not include); `peak_mib` after `stop()`."""

    INTERVAL_S = 0.25

    def __init__(self):
        self.peak_mib = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        while not self._done.is_set():
            total = sum(_pss_mib(pid) for pid in [me, *_descendants(me)])
            self.peak_mib = max(self.peak_mib, total)
            self._done.wait(self.INTERVAL_S)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def _classify_in_child(config, out: Path) -> None:
    """The child: `featx classify` as the CLI runs it, then its peak memory and wall time into out/bench.json."""
    import faiss  # noqa: F401  (imported here so the baseline holds what the audit imports)
    import sklearn.linear_model  # noqa: F401
    import xgboost  # noqa: F401
    from joblib.externals.loky import get_reusable_executor
    from rich.console import Console

    from featx.bench.extract import rss_mib
    from featx.classify import stage  # noqa: F401
    from featx.results.finish import classify_command

    baseline = rss_mib()  # the interpreter and the libraries, before any data
    started = time.perf_counter()
    try:
        with open(os.devnull, "w") as quiet, TreeMemory() as tree:
            classify_command(config, Console(file=quiet, width=160))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent says "interrupted"
        get_reusable_executor().shutdown(wait=False, kill_workers=True)
        os._exit(130)
    wall = time.perf_counter() - started
    # a spawned child joins its children on exit: the idle fit workers would hold it for their 300 s timeout
    get_reusable_executor().shutdown(wait=True)
    (out / "bench.json").write_text(
        json.dumps(
            {
                "wall_s": wall,
                "peak_rss_mib": _peak_rss_mib(),
                "baseline_rss_mib": baseline,
                "tree_pss_mib": tree.peak_mib,
            }
        )
    )


def classify_in_child(config) -> dict:
    """Run `featx classify` (config) in a fresh spawned process; {wall_s, peak_rss_mib} of that process."""
    context = multiprocessing.get_context("spawn")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    child = context.Process(target=_classify_in_child, args=(config, out))
    child.start()
    try:
        child.join()
    except KeyboardInterrupt:
        child.join(timeout=10)  # a Ctrl-C at the terminal reached the child too: it stops its workers and exits
        if child.is_alive():  # a SIGINT sent to featx alone: stop the child and its fit workers here
            for pid in [*_descendants(child.pid), child.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            child.join()
        raise
    if child.exitcode != 0:
        raise RuntimeError(f"featx classify failed in the benchmark's child process (exit code {child.exitcode})")
    return json.loads((out / "bench.json").read_text())


def phases(out_dir: Path) -> dict:
    """Seconds per phase from the run records of one classify: audits once per cache, then per classifier."""
    records = [json.loads(p.read_text()) for p in sorted((Path(out_dir) / "runs").glob("*.json"))]
    result: dict = {"classifiers": {}}
    for record in records:
        audit = record.get("audit") or {}
        near = audit.get("near_duplicates") or {}
        result["near_duplicates_s"] = near.get("seconds")
        result["near_method"] = near.get("method")
        result["exact_duplicates_s"] = (audit.get("exact_duplicates") or {}).get("seconds")
        timings = record.get("timings") or {}
        result["classifiers"][record["classifier"]] = {
            "search_s": timings.get("search_s"),
            "refit_s": timings.get("refit_s"),
            "image_cv_s": timings.get("image_cv_s"),
            "total_s": timings.get("total_s"),
            "n_fits": timings.get("n_fits"),
            "test_auc": ((record.get("test") or {}).get("auc") or {}).get("value"),
            "search_scheme": record.get("search_scheme"),
        }
    return result


def bench_scale_command(
    rows: tuple[int, ...],
    dim: int,
    labels: int,
    classifiers: tuple[str, ...],
    console,
    workdir: Path | None = None,
    n_jobs: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Write a cache per row count, classify it in a child process, print a table of phases and memory."""
    from rich.table import Table

    from featx.classify.registry import get_classifier
    from featx.classify.stage import ClassifyConfig

    for name in classifiers:
        get_classifier(name)  # unknown names fail before any work
    scratch = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="featx-bench-scale-"))
    task = "binary" if labels <= 1 else f"{labels} labels"
    console.print(
        f"[bold]featx bench scale[/]: rows {', '.join(f'{n:,}' for n in rows)} x {dim:,} dims, {task}, "
        f"classifiers {', '.join(classifiers)}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; in {scratch}"
    )
    results = []
    try:
        for n_rows in rows:
            features = scratch / f"features_{n_rows}"
            if features.exists():
                shutil.rmtree(features)
            started = time.perf_counter()
            write_synthetic_cache(features / "synthetic.h5", n_rows, dim, labels, seed)
            write_s = time.perf_counter() - started
            config = ClassifyConfig(
                features_dir=features,
                out_dir=scratch / f"results_{n_rows}",
                classifiers=tuple(classifiers),
                n_jobs=n_jobs,
                seed=seed,
                force=True,
            )
            measured = classify_in_child(config)
            found = phases(config.out_dir)
            matrix_mib = n_rows * dim * 4 / 1024**2
            fitted = sum((c["total_s"] or 0.0) for c in found["classifiers"].values())
            row = {
                "rows": n_rows,
                "dim": dim,
                "labels": labels,
                "write_s": write_s,
                "classify_s": measured["wall_s"],
                "peak_rss_mib": measured["peak_rss_mib"],
                "tree_pss_mib": measured.get("tree_pss_mib"),
                "matrix_mib": matrix_mib,
                "rss_over_matrix": measured["peak_rss_mib"] / matrix_mib,
                "baseline_rss_mib": measured["baseline_rss_mib"],
                "rss_above_baseline_over_matrix": (measured["peak_rss_mib"] - measured["baseline_rss_mib"])
                / matrix_mib,
                "other_s": measured["wall_s"] - fitted - (found.get("near_duplicates_s") or 0.0),
                "load": os.getloadavg()[0],
                **found,
            }
            results.append(row)
            per = "; ".join(
                f"{name}: search {c['search_s']:.1f} s"
                + (f", image CV {c['image_cv_s']:.1f} s" if c.get("image_cv_s") is not None else "")
                + f", run {c['total_s']:.1f} s, test AUC {c['test_auc']:.3f}"
                + (f", {c['search_scheme']['scheme']}" if c.get("search_scheme") else "")
                for name, c in found["classifiers"].items()
            )
            console.print(
                f"  {n_rows:,} rows: write {write_s:.1f} s; classify {measured['wall_s']:.1f} s "
                f"(near duplicates {found['near_duplicates_s']:.1f} s, {found['near_method']}; exact "
                f"{found['exact_duplicates_s']:.2f} s; {per}); peak RSS {measured['peak_rss_mib']:,.0f} MiB = "
                f"{row['rss_over_matrix']:.2f}x the {matrix_mib:,.0f} MiB matrix ({row['baseline_rss_mib']:,.0f} MiB "
                f"before any data: {row['rss_above_baseline_over_matrix']:.2f}x above it); with its fit workers, "
                f"peak {row['tree_pss_mib']:,.0f} MiB PSS ({row['tree_pss_mib'] / matrix_mib:.2f}x the matrix, sampled "
                f"every {TreeMemory.INTERVAL_S} s); load {row['load']:.1f}"
            )
            shutil.rmtree(features, ignore_errors=True)
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    table = Table(title=f"stage two at scale ({dim} dims, {task}): seconds, and growth against the previous size")
    columns = (
        "rows",
        "classify (s)",
        "near dup. (s)",
        "search (s)",
        "peak RSS (MiB)",
        "RSS / matrix",
        "tree PSS (MiB)",
        "rows/time/RSS",
    )
    for column in columns:
        table.add_column(column, justify="right")
    previous = None
    for row in results:
        search = sum((c["search_s"] or 0.0) for c in row["classifiers"].values())
        growth = ""
        if previous is not None:
            growth = (
                f"x{row['rows'] / previous['rows']:.1f} / x{row['classify_s'] / previous['classify_s']:.1f} / "
                f"x{row['peak_rss_mib'] / previous['peak_rss_mib']:.1f}"
            )
        table.add_row(
            f"{row['rows']:,}",
            f"{row['classify_s']:.1f}",
            f"{row['near_duplicates_s']:.1f}",
            f"{search:.1f}",
            f"{row['peak_rss_mib']:,.0f}",
            f"{row['rss_over_matrix']:.2f}",
            f"{row['tree_pss_mib']:,.0f}",
            growth,
        )
        previous = row
    console.print(table)
    return results
