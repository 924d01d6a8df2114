"""`featx bench extract --engine ray`: the Ray engine against the local engine on the same images.

One invocation:
1. measures the decode + resize cost per image on one core (CPU seconds, so other load on a
   shared machine inflates it less than wall time): the figure that sets how many cores a GPU
   actor needs (featx.engines.ray_engine.CPUS_PER_GPU_ACTOR);
2. per backbone, runs `featx extract` with the local engine, then with the Ray engine, and
   checks that the two caches are bit-identical (every dataset, every attribute but the time);
3. runs the Ray engine once more on its own (no cache), timing when each range arrives: the
   rate after the first range is the steady rate, and the time to the first range less that
   range's work at the steady rate is Ray's fixed start-up cost (cluster, actors, backbones);
4. optionally (--classify) runs `featx classify` on the local cache with the local engine and
   on the Ray cache with the Ray engine, and checks the run records agree.

Images: generated chest-like JPEGs (as `featx bench extract`), or a real manifest (--manifest; a
longer one is sampled: --images evenly spaced rows, so every class and split is there).
A benchmark reports numbers; it asserts nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

RUN_KEYS = ("best_params", "cv_auc_mean", "cv_auc_std", "threshold", "test", "test_predictions")


def decode_seconds_per_image(paths, size: tuple[int, int], batch_size: int = 32) -> dict:
    """CPU seconds one decode thread spends per image (decode + resize), and the wall rate it reached."""
    from featx.data.images import iter_batches

    cpu, wall = time.process_time(), time.perf_counter()
    count = sum(len(batch) for batch in iter_batches(paths, size, "stretch", batch_size=batch_size, workers=1))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"images": count, "cpu_s_per_image": cpu / count, "per_core_rate": count / cpu, "wall_rate": count / wall}


def cache_datasets(path) -> tuple[dict, dict]:
    """Every dataset of a cache (read through the store) and its attributes but created_utc and content_sha256."""
    from featx.extract import store

    header, rows = store.read_header(path), store.read_rows(path)
    data = {
        "labels": rows.y,
        "classes": np.asarray(rows.classes, dtype=object),
        "ids": rows.ids,
        "split": rows.split,
        "patient_id": rows.patient_id,
        "ok": rows.ok,
        "errors": np.asarray(rows.errors, dtype=object),
        "sha256": np.asarray(rows.image_sha256, dtype=object),
        **{f"meta/{name}": np.asarray(values, dtype=object) for name, values in rows.meta.items()},
    }
    for pooling in header.poolings:
        data[f"embeddings/{pooling}"] = store.load(path, pooling, sha256="not hashed").X
    # content_sha256 seals created_utc with the rest, so it differs between any two builds
    return data, {key: value for key, value in header.attrs.items() if key not in ("created_utc", "content_sha256")}


def identical_caches(a, b) -> list[str]:
    """The names of the datasets or attributes on which two caches differ (empty: bit-identical)."""
    (data_a, attrs_a), (data_b, attrs_b) = cache_datasets(a), cache_datasets(b)
    differ = sorted(set(data_a) ^ set(data_b)) + sorted(set(attrs_a) ^ set(attrs_b))
    for name in sorted(set(data_a) & set(data_b)):
        x, y = data_a[name], data_b[name]
        same = x.dtype == y.dtype and x.shape == y.shape
        same = same and (x.tolist() == y.tolist() if x.dtype.kind == "O" else x.tobytes() == y.tobytes())
        if not same:
            differ.append(name)
    differ += [f"attrs/{key}" for key in sorted(set(attrs_a) & set(attrs_b)) if attrs_a[key] != attrs_b[key]]
    return differ


def _extract(backbone, manifest, data_root, out, engine, batch_size, image_size, limit=None) -> dict:
    from rich.console import Console

    from featx.bench.extract import fresh_extract

    shutil.rmtree(out, ignore_errors=True)  # before the clock starts
    started = time.perf_counter()
    summary = fresh_extract(
        backbone,
        manifest,
        data_root,
        out,
        batch_size,
        Console(quiet=True),
        image_size=image_size,
        limit=limit,
        engine=engine,
    )
    return {"wall_s": time.perf_counter() - started, "rows": summary.rows, "path": summary.path}


def spread_sample(manifest, n_rows: int, out: Path) -> Path:
    """A manifest of n_rows evenly spaced rows of `manifest` (a data.manifest.Manifest), written to `out`."""
    from featx.data.manifest import LABEL_SEPARATOR, write_manifest

    step = len(manifest) / n_rows
    picked = [int(k * step) for k in range(n_rows)]
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(
        (
            {
                "path": manifest.paths[i],
                "label": LABEL_SEPARATOR.join(manifest.labels[i]),
                "split": manifest.splits[i],
                "patient_id": manifest.patient_ids[i],
            }
            for i in picked
        ),
        out,
    )


def ray_timeline(backbone, paths, engine, batch_size: int, image_size) -> dict:
    """The Ray engine alone on `paths` (no cache written): start-up cost and steady rate from range arrivals."""
    from rich.console import Console

    from featx.engines import get_engine
    from featx.extract import backbones
    from featx.extract.work import EmbedRequest, ModelRecipe

    spec = backbones.get_backbone(backbone)
    size = backbones.check_image_size(spec, image_size)
    recipe = ModelRecipe(spec.name, backbones.resolve_weights("random", 0, spec, size), size, ("avg",))
    request = EmbedRequest(paths, size, "stretch", batch_size, {backbone: recipe}, {backbone: 0})
    started = time.perf_counter()
    arrivals = []
    with get_engine(engine).open(request, Console(quiet=True)) as embedded:
        connected = time.perf_counter()
        for rows in embedded:
            arrivals.append((time.perf_counter(), len(rows), rows.worker))
    # The actors start together and each embeds a range; the first range arrives one range's work (at one
    # actor's share of the steady rate) after they are ready.
    first_at, first_rows = arrivals[0][0], arrivals[0][1]
    later = sum(n for _, n, _ in arrivals[1:])
    steady = later / (arrivals[-1][0] - first_at) if later and arrivals[-1][0] > first_at else None
    actors = len({worker for _, _, worker in arrivals})
    startup = first_at - started - (first_rows * actors / steady if steady else 0.0)
    return {
        "connect_s": connected - started,
        "first_range_s": first_at - started,
        "steady": steady,
        "startup": startup,
        "actors": actors,
    }


def _classify(features: Path, out: Path, engine, classifiers, n_jobs: int) -> dict:
    from rich.console import Console

    from featx.classify.stage import ClassifyConfig
    from featx.results.finish import classify_runs

    shutil.rmtree(out, ignore_errors=True)
    config = ClassifyConfig(features_dir=features, out_dir=out, classifiers=classifiers, n_jobs=n_jobs, engine=engine)
    started = time.perf_counter()
    paths = classify_runs(config, Console(quiet=True))
    records = {Path(path).name: json.loads(Path(path).read_text()) for path in paths}
    return {"wall_s": time.perf_counter() - started, "records": records}


def bench_engines_command(
    backbones, n_images, source_size, batch_size, image_size, engine, workdir, console,
    manifest=None, data_root=None, classify=(), n_jobs=2,
) -> dict:  # fmt: skip
    """Local vs Ray engine: rates, Ray's start-up cost, bit-identity of the caches (and of stage two's records)."""
    from rich.table import Table

    from featx.bench.extract import write_jpegs
    from featx.data.manifest import read_manifest, resolve_path
    from featx.engines import LOCAL, check_engine, range_rows
    from featx.extract import backbones as registry

    check_engine(engine, batch_size)
    for name in backbones:
        registry.get_backbone(name)
    scratch = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="featx-bench-engines-"))
    try:
        if manifest is None:
            data_root = scratch / "jpegs"
            console.print(f"Writing {n_images} {source_size}x{source_size} JPEGs to {data_root} ...")
            manifest = write_jpegs(data_root, n_images, source_size)
        rows = read_manifest(manifest)
        if len(rows) > n_images:  # a spread sample, so classes and splits are all there
            console.print(f"{n_images} evenly spaced rows of the {len(rows)} in {manifest}")
            manifest = spread_sample(rows, n_images, scratch / f"manifest_{n_images}.csv")
            rows = read_manifest(manifest)
        n_rows = min(len(rows), n_images)
        paths = [resolve_path(data_root, rel) for rel in rows.paths[:n_rows]]
        decode_size = (image_size, image_size) if image_size else (224, 224)
        decode = decode_seconds_per_image(paths[: min(n_rows, 256)], decode_size, batch_size)
        console.print(
            f"decode + resize to {decode_size[0]} px on one core: {decode['cpu_s_per_image'] * 1000:.2f} ms CPU "
            f"per image = {decode['per_core_rate']:.0f} images/s per core"
        )
        one_range = range_rows(engine, batch_size)
        results = []
        for backbone in backbones:
            local = _extract(backbone, manifest, data_root, scratch / "local", LOCAL, batch_size, image_size, n_rows)
            console.print(f"{backbone}: local engine {local['wall_s']:.1f} s for {n_rows} images")
            ray = _extract(backbone, manifest, data_root, scratch / "ray", engine, batch_size, image_size, n_rows)
            console.print(f"{backbone}: Ray engine {ray['wall_s']:.1f} s for {n_rows} images")
            timeline = ray_timeline(backbone, paths, engine, batch_size, image_size)
            console.print(
                f"{backbone}: Ray engine alone: connected in {timeline['connect_s']:.1f} s, first range of "
                f"{min(one_range, n_rows)} rows after {timeline['first_range_s']:.1f} s"
            )
            differ = identical_caches(local["path"], ray["path"])
            result = {
                "backbone": backbone,
                "local_s": local["wall_s"],
                "ray_s": ray["wall_s"],
                "local_rate": n_rows / local["wall_s"],
                "ray_rate": n_rows / ray["wall_s"],
                "ray_steady_rate": timeline["steady"],
                "ray_startup_s": timeline["startup"],
                "ray_connect_s": timeline["connect_s"],
                "bit_identical": not differ,
                "differ": differ,
            }
            if classify:
                local_runs = _classify(scratch / "local", scratch / "results-local", LOCAL, classify, n_jobs)
                ray_runs = _classify(scratch / "ray", scratch / "results-ray", engine, classify, n_jobs)
                result["classify_identical"] = all(
                    local_runs["records"][name][key] == ray_runs["records"].get(name, {}).get(key)
                    for name in local_runs["records"]
                    for key in RUN_KEYS
                )
                result["classify_local_s"], result["classify_ray_s"] = local_runs["wall_s"], ray_runs["wall_s"]
            results.append(result)
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    table = Table(
        title=f"featx bench extract --engine ray: {n_rows} images, batch {batch_size}, {os.cpu_count()} cores"
    )
    for column in ("backbone", "local/s", "Ray/s", "ratio", "steady/s", "start-up"):
        table.add_column(column, justify="left" if column == "backbone" else "right")
    table.add_column("caches")
    if classify:
        table.add_column("runs")
    for r in results:
        cells = [
            r["backbone"],
            f"{r['local_rate']:.2f}",
            f"{r['ray_rate']:.2f}",
            f"{r['ray_rate'] / r['local_rate']:.2f}",
            f"{r['ray_steady_rate']:.2f}" if r["ray_steady_rate"] else "-",
            f"{r['ray_startup_s']:.1f} s",
            "identical" if r["bit_identical"] else "DIFFER: " + ", ".join(r["differ"][:4]),
        ]
        if classify:
            cells.append("same" if r["classify_identical"] else "DIFFER")
        table.add_row(*cells)
    console.print(table)
    console.print(
        "local/s, Ray/s: images per second of the whole command (Ray's includes starting Ray, the actors and "
        "their backbones); ratio = Ray/s / local/s; steady/s and start-up: Ray's rate once running and its fixed "
        "cost, from the range arrival times of a third run (the Ray engine alone); caches: local vs Ray, every "
        "dataset and attribute; runs: stage two's records (local engine on the local cache vs Ray engine on the "
        "Ray cache)."
    )
    summary = {"decode": decode, "results": [{k: v for k, v in r.items() if k != "differ"} for r in results]}
    console.print_json(json.dumps(summary, default=lambda v: float(v) if isinstance(v, np.floating) else str(v)))
    return summary
