"""Stage one: manifest -> decoded batches -> frozen backbones -> the HDF5 embedding cache.

Everything the user gave is checked before a model is built. A backbone whose
complete cache matches the request is a hit, answered from the file's attributes
alone (no model, no TensorFlow import). Backbones that need work and agree on
image size and resize mode share one decode of every image; all poolings of a
backbone come from one forward pass.
"""

from __future__ import annotations

import shlex
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from featx import __version__
from featx.engines import LOCAL, EngineConfig, check_engine
from featx.errors import BackboneError, CacheError, FeatxError, ManifestError
from featx.extract import store
from featx.extract.backbones import PIXEL_FLOOR, RANDOM_BANNER
from featx.files import check_writable_dir
from featx.progress import progress_bar
from featx.runtime import interrupts_deferred, library_versions

_EXISTENCE_PROBE_ROWS = 20
FAILURES_SHOWN = 5  # failed images named in the summary; the rest are in <name>.errors.csv


@dataclass(frozen=True)
class ExtractConfig:
    """The arguments of `featx extract`."""

    backbones: tuple[str, ...]
    manifest: Path
    data_root: Path | str  # a folder, or an fsspec URL (featx.data.storage)
    out_dir: Path = Path("features")
    weights: str = "imagenet"
    poolings: tuple[str, ...] = ("avg",)
    image_size: int | tuple[int, int] | None = None
    resize_mode: str = "stretch"
    batch_size: int = 32
    mixed_precision: bool = False
    force: bool = False
    seed: int = 0
    workers: int | None = None
    limit: int | None = None
    engine: EngineConfig = LOCAL  # where the rows are embedded (featx/engines); the cache is written here either way
    dicom_window: str = "file"  # featx.data.dicom.DICOM_WINDOWS; recorded only when some row is DICOM


@dataclass(frozen=True)
class ExtractSummary:
    """One backbone's outcome: its cache, status, rows, failures and throughput."""

    backbone: str
    path: Path
    status: str  # "hit" | "built" | "resumed"
    rows: int
    failures: int
    seconds: float
    rate: float  # images embedded per second in this run (0 for a hit)
    weights_label: str
    random_weights: bool = False
    note: str | None = None
    failed_images: tuple[tuple[str, str], ...] = ()  # (manifest path, reason): the first FAILURES_SHOWN
    errors_csv: Path | None = None  # every failed image, beside the cache


@dataclass
class _Job:
    """One backbone's share of a run."""

    spec: object
    weights: object
    image_size: tuple[int, int]
    path: Path
    attrs: dict
    widths: dict[str, int]
    writer: store.CacheWriter | None = None
    started: float = 0.0
    seconds: float = 0.0
    rows_this_run: int = 0
    summary: ExtractSummary | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- validation


def with_pixel_floor(backbones: Sequence[str]) -> tuple[str, ...]:
    """The backbones asked for, then the raw-pixel floor (`pixels`) unless it is among them.

    `featx extract` adds it by default, so every leaderboard shows what a backbone adds over raw pixels.
    """
    backbones = tuple(backbones)
    return backbones if not backbones or PIXEL_FLOOR in backbones else (*backbones, PIXEL_FLOOR)


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _check_manifest_paths(rel_paths: Sequence[str], data_root) -> list:
    """Every path resolved inside the data root; a wrong --data-root is caught when none of the first rows exist."""
    paths = [data_root.resolve(rel) for rel in rel_paths]
    probe = paths[:_EXISTENCE_PROBE_ROWS]
    if probe and not any(data_root.exists(p) for p in probe):
        raise ManifestError(
            f"None of the first {len(probe)} manifest paths exist under the data root '{data_root.text}' "
            f"(e.g. {rel_paths[0]!r}); check --data-root."
        )
    return paths


def _duplicate_paths_warning(paths: Sequence[str]) -> str | None:
    """One sentence when manifest rows repeat a path (each copy would be embedded and counted again)."""
    counts = Counter(paths)
    repeated = [path for path, n in counts.items() if n > 1]
    if not repeated:
        return None
    extra = sum(counts[path] - 1 for path in repeated)
    return (
        f"{len(repeated)} path(s) are listed more than once in the manifest (e.g. {repeated[0]!r}, "
        f"{counts[repeated[0]]} times), so {extra} extra row(s) embed the same file again and count twice in "
        "training or test; remove the duplicates (`featx manifest check` lists them)."
    )


def _unwindowed_dicom_warning(paths: Sequence, pending: Sequence[_Job], data_root) -> str | None:
    """With `--dicom-window file`, how many DICOM rows have no window and so are scaled to the full range of
    their stored bits (a 16-bit CT or RT dose whose values fill a sliver of it comes out almost flat), and what
    to pass instead. Header-only reads of the DICOM rows of a local data root, and only when some cache is to
    be written (`pending`; hits have nothing to warn about); None when every DICOM row has a window."""
    from featx.data import dicom
    from featx.data.manifest import RASTER_SUFFIXES

    if not pending or pending[0].attrs["dicom_window"] != "file" or data_root.filesystem is not None:
        return None
    dicom_paths = [path for path in paths if dicom.is_dicom_path(path, RASTER_SUFFIXES)]
    flat = [path for path in dicom_paths if dicom.window_source(path) == "stored bits"]
    if not flat:
        return None
    return (
        f"{len(flat)} of {len(dicom_paths)} DICOM rows have no window (no VOI LUT, no WindowCenter/WindowWidth; "
        f"e.g. {Path(flat[0]).name}): with --dicom-window file they are scaled to the full range of their stored "
        "bits, which can leave an image almost flat (a 16-bit CT or dose map filling a sliver of it); "
        "--dicom-window minmax (each image's own range) or percentile (its 0.5th–99.5th percentiles) scales "
        "each image to its content."
    )


def _extract_args(
    config: ExtractConfig, spec, info, size, poolings, manifest_path: Path, data_root: str, limit, dicom_window: str
):
    """The arguments of the `featx extract` command that rebuilds one backbone's cache (recorded in it, so
    every later complaint about the cache can name the exact command that fixes it)."""
    parts = ["--backbone", spec.name, "--manifest", str(manifest_path.resolve()), "--data-root", data_root]
    weights = {"file": info.path, "preset": "pretrained", "onnx": "pretrained"}.get(info.kind, info.label)
    parts += ["--weights", weights]
    if info.kind == "random":
        parts += ["--seed", str(int(info.seed))]
    parts += ["--pooling", ",".join(poolings)]
    if size[0] == size[1]:  # the CLI takes square sizes only
        parts += ["--image-size", str(int(size[0]))]
    if config.resize_mode != "stretch":
        parts += ["--resize-mode", config.resize_mode]
    if limit is not None:
        parts += ["--limit", str(int(limit))]
    if dicom_window not in (store.NO_DICOM, ExtractConfig.dicom_window):
        parts += ["--dicom-window", dicom_window]
    if config.mixed_precision:
        parts.append("--mixed-precision")
    return shlex.join(parts)


def _versions() -> dict[str, str]:
    """The cache attrs tensorflow_version and keras_version ("absent" where the package is not installed)."""
    versions = library_versions()
    return {f"{package}_version": versions[package] or "absent" for package in ("tensorflow", "keras")}


def _plan(config: ExtractConfig):
    """Check every input and describe each backbone's job; nothing is built or written yet."""
    from featx.data import dicom, images
    from featx.data.manifest import RASTER_SUFFIXES, read_manifest
    from featx.data.storage import open_data_root
    from featx.extract import backbones

    names = _unique(config.backbones)
    if not names:
        raise BackboneError("No backbone given; pass --backbone NAME (see `featx backbones`).")
    specs = [backbones.get_backbone(name) for name in names]
    poolings = _unique(config.poolings)
    if not poolings:
        raise BackboneError(f"No pooling given; pass --pooling with some of {list(backbones.POOLINGS)}.")
    poolings = tuple(backbones.check_pooling(p) for p in poolings)
    images.check_resize_mode(config.resize_mode)
    dicom.check_window(config.dicom_window)
    if int(config.batch_size) < 1:
        raise FeatxError(f"The batch size must be a positive integer. Got {config.batch_size!r} instead.")
    if config.limit is not None and int(config.limit) < 1:
        raise FeatxError(f"The limit must be a positive integer. Got {config.limit!r} instead.")
    check_engine(config.engine, int(config.batch_size))
    sizes = [backbones.check_image_size(spec, config.image_size) for spec in specs]

    manifest_path = Path(config.manifest)
    if not manifest_path.is_file():
        raise ManifestError(
            f"The manifest '{manifest_path}' does not exist; pass --manifest a CSV file (see `featx manifest scan`)."
        )
    data_root = open_data_root(config.data_root)
    if not data_root.is_dir():
        raise ManifestError(
            f"The data root '{data_root.text}' is not a folder; pass --data-root the folder the manifest paths are "
            "relative to."
        )
    manifest = read_manifest(manifest_path)
    n_rows = len(manifest) if config.limit is None else min(len(manifest), int(config.limit))
    paths = _check_manifest_paths(manifest.paths[:n_rows], data_root)
    weights = [backbones.resolve_weights(config.weights, config.seed, spec, size) for spec, size in zip(specs, sizes)]
    out_dir = check_writable_dir(
        config.out_dir, CacheError, "output directory", "pass --out a folder you can write the <backbone>.h5 caches to"
    )

    data_root_text = data_root.text
    # The window changes DICOM pixels only: a manifest without DICOM rows records "none", so the flag cannot
    # invalidate its caches.
    has_dicom = any(dicom.is_dicom_path(path, RASTER_SUFFIXES) for path in paths)
    dicom_window = config.dicom_window if has_dicom else store.NO_DICOM
    jobs = []
    for spec, size, info in zip(specs, sizes, weights):
        requested = poolings
        poolings = backbones.poolings_for(spec, requested)
        attrs = {
            "format": store.FORMAT,
            "featx_version": __version__,
            "backbone": spec.name,
            "weights": info.label,
            "weights_sha256": info.sha256,
            "weights_seed": int(info.seed),
            "image_size": [int(size[0]), int(size[1])],
            "resize_mode": config.resize_mode,
            "preprocess": backbones.preprocess_of(spec, info),
            "backbone_group": spec.group,
            "poolings": list(poolings),
            "manifest_sha256": manifest.sha256_hex,
            "data_root": data_root_text,
            "dicom_window": dicom_window,
            "extract_args": _extract_args(
                config,
                spec,
                info,
                size,
                poolings,
                manifest_path,
                data_root_text,
                n_rows if n_rows < len(manifest) else None,
                dicom_window,
            ),
        }
        widths = {pooling: int(spec.embedding_width(pooling, size)) for pooling in poolings}
        job = _Job(
            spec=spec,
            weights=info,
            image_size=size,
            path=store.cache_path(out_dir, spec.file_stem),
            attrs=attrs,
            widths=widths,
        )
        if set(poolings) != set(requested):
            job.notes.append(f"poolings {', '.join(poolings)} (of {', '.join(requested)}: what its output supports).")
        poolings = requested
        if config.weights == "auto" and info.kind == "random":
            job.notes.append("--weights auto: no ImageNet weights cached, so random weights were used.")
        jobs.append(job)
    return manifest, n_rows, paths, jobs, data_root


# ---------------------------------------------------------------- the run


def _summary(job: _Job, status: str, rows: int, failures: Sequence[tuple[str, str]]) -> ExtractSummary:
    rate = job.rows_this_run / job.seconds if job.seconds > 0 and job.rows_this_run else 0.0
    return ExtractSummary(
        backbone=job.spec.name,
        path=job.path,
        status=status,
        rows=rows,
        failures=len(failures),
        failed_images=tuple(failures[:FAILURES_SHOWN]),
        errors_csv=store.errors_csv_path(job.path) if failures else None,
        seconds=job.seconds,
        rate=rate,
        weights_label=job.weights.label,
        random_weights=job.weights.kind == "random",
        note=" ".join(job.notes) or None,
    )


def run_extract(config: ExtractConfig, console=None) -> list[ExtractSummary]:
    """Embed every manifest row with every backbone; one ExtractSummary per backbone, in the order given."""
    if console is None:
        from rich.console import Console

        console = Console(quiet=True)
    manifest, n_rows, paths, jobs, data_root = _plan(config)
    labels = manifest.label_array()[:n_rows]
    ids, split, patient_id = manifest.paths[:n_rows], manifest.splits[:n_rows], manifest.patient_ids[:n_rows]
    meta = {name: values[:n_rows] for name, values in manifest.meta.items()}

    duplicates = _duplicate_paths_warning(ids)
    if duplicates:
        console.print(f"[yellow]warning[/]: {duplicates}", soft_wrap=True)
    for job in jobs:
        for note in job.notes:
            console.print(f"[yellow]{job.spec.name}[/]: {note}")
    pending = []
    same_files = _FilesUnderRoot(paths, data_root, console)
    for job in jobs:
        started = time.perf_counter()
        if store.check_cache(job.path, job.attrs, n_rows, force=config.force, files_match=same_files):
            failures = store.read_rows(job.path).failures
            if failures and not store.errors_csv_path(job.path).exists():
                store.write_errors_csv(job.path, failures)
            job.seconds = time.perf_counter() - started
            job.summary = _summary(job, "hit", n_rows, failures)
            cached_root = store.read_header(job.path).attrs.get("data_root")
            how = (
                "is up to date"
                if cached_root == data_root.text
                else f"was built under {cached_root!r} and every file under {data_root.text!r} has the cached "
                "sha256, so it is reused as it is"
            )
            console.print(f"[green]{job.spec.name}[/]: cache hit, {job.path} {how} (nothing to do).", soft_wrap=True)
        else:
            pending.append(job)
    unwindowed = _unwindowed_dicom_warning(paths, pending, data_root)
    if unwindowed:
        console.print(f"[yellow]warning[/]: {unwindowed}", soft_wrap=True)

    groups: dict[tuple, list[_Job]] = {}
    for job in pending:
        groups.setdefault((tuple(job.image_size), config.resize_mode), []).append(job)

    for (size, resize_mode), group in groups.items():
        rows = _Rows(ids, labels, manifest.classes, split, patient_id, meta)
        _run_group(group, config, size, resize_mode, paths, rows, console, decode_options=data_root.decode_options)
    return [job.summary for job in jobs]


class _FilesUnderRoot:
    """Whether the manifest's files under this data root are byte for byte the ones a cache was built from.

    Asked only when a cache differs from the request in its data root alone (the data folder moved); the
    answer is computed once per run and shared by every backbone. Rows that could not be read when the
    cache was built are not compared.
    """

    def __init__(self, paths: Sequence, data_root, console):
        self.paths, self.data_root, self.console = paths, data_root, console
        self._answer: bool | None = None

    def __call__(self, ids: np.ndarray, digests: np.ndarray, ok: np.ndarray) -> bool:
        if self._answer is None:
            self._answer = len(ids) == len(self.paths) and self._all_equal(digests, ok)
        return self._answer

    def _all_equal(self, digests: np.ndarray, ok: np.ndarray) -> bool:
        from featx.data.images import read_file
        from featx.errors import ImageReadError
        from featx.files import bytes_sha256
        from featx.progress import track

        filesystem = self.data_root.decode_options.get("filesystem")
        rows = track(range(len(self.paths)), len(self.paths), "comparing file hashes", self.console)
        for row in rows:
            if not ok[row]:
                continue
            try:
                if bytes_sha256(read_file(self.paths[row], filesystem)) != str(digests[row]):
                    return False
            except ImageReadError:
                return False
        return True


@dataclass(frozen=True)
class _Rows:
    """What every cache of a run stores per row besides its embeddings."""

    ids: Sequence[str]
    labels: np.ndarray
    classes: Sequence[str]
    split: Sequence[str]
    patient_id: Sequence[str]
    meta: dict[str, Sequence[str]]


def _run_group(group, config, size, resize_mode, paths, rows: _Rows, console, decode_options=None) -> None:
    """Open every writer of the group, then write the rows the engine embeds (one shared decode for all)."""
    from featx.data import dicom
    from featx.engines import get_engine
    from featx.engines.shards import shard_dir
    from featx.extract.work import EmbedRequest, ModelRecipe

    engine = get_engine(config.engine)
    versions = _versions()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        for job in group:
            job.writer = store.open_writer(
                job.path,
                attrs={**job.attrs, **versions, "created_utc": created},
                ids=rows.ids,
                labels=rows.labels,
                classes=rows.classes,
                split=rows.split,
                patient_id=rows.patient_id,
                widths=job.widths,
                meta=rows.meta,
                force=config.force,
                batch_rows=config.batch_size,
            )
            if job.writer.note:
                job.notes.append(job.writer.note)
                console.print(f"[yellow]{job.spec.name}[/]: {job.writer.note}")
        todo = [job for job in group if job.writer.n_done < job.writer.n_total]
        n_total = len(rows.ids)
        if todo:
            dicom_window = group[0].attrs["dicom_window"]
            if dicom_window == store.NO_DICOM:
                dicom_window = dicom.DEFAULT_WINDOW
            request = EmbedRequest(
                paths=paths,
                image_size=size,
                resize_mode=resize_mode,
                batch_size=config.batch_size,
                recipes={
                    job.spec.name: ModelRecipe(
                        job.spec.name, job.weights, size, tuple(job.widths), mixed_precision=config.mixed_precision
                    )
                    for job in todo
                },
                first_rows={job.spec.name: job.writer.n_done for job in todo},
                workers=config.workers,
                decode_options={"dicom_window": dicom_window, **(decode_options or {})},
                shards=shard_dir(group[0].path.parent, [job.spec.file_stem for job in todo])
                if config.engine.shards
                else None,
            )
            with engine.open(request, console) as embedded, progress_bar(console, unit="img") as progress:
                tasks = {
                    id(job): progress.add_task(job.spec.name, total=n_total, completed=job.writer.n_done)
                    for job in group
                }
                for job in group:
                    job.started = time.perf_counter()
                for embedded_rows in embedded:
                    for job in todo:
                        part = embedded_rows.part(job.spec.name)
                        if part is None:
                            continue
                        first, embeddings, ok, errors, sha256 = part
                        tick = time.perf_counter()
                        errors = [(rows.ids[row], reason) for row, reason in errors]
                        with interrupts_deferred():  # a chunk and its n_done are written whole; Ctrl-C lands after
                            job.writer.write(first, embeddings, ok, errors, sha256)
                        job.seconds += time.perf_counter() - tick
                        job.rows_this_run += len(ok)
                        progress.update(tasks[id(job)], completed=job.writer.n_done)
        for job in group:
            status = "resumed" if job.writer.resumed_from > 0 else "built"
            job.seconds = time.perf_counter() - job.started if job.started else 0.0
            with interrupts_deferred():
                job.writer.finish()
            job.summary = _summary(job, status, n_total, job.writer.failures)
    except KeyboardInterrupt:
        for job in group:
            if job.writer is not None and not job.writer.closed and job.writer.n_done > 0:
                console.print(
                    f"[yellow]{job.spec.name}[/]: interrupted at row {job.writer.n_done}; run the same command to resume."
                )
        raise
    finally:
        for job in group:
            if job.writer is not None:
                job.writer.close()


# ---------------------------------------------------------------- the command


def print_summary(summaries: Sequence[ExtractSummary], console) -> None:
    """The summary table, each cache's path, and the random-weights banner when any backbone was random."""
    from rich import box
    from rich.table import Table

    table = Table(title="featx extract", box=box.SIMPLE_HEAD, pad_edge=False)
    for column, justify in (
        ("backbone", "left"),
        ("weights", "left"),
        ("status", "left"),
        ("rows", "right"),
        ("failures", "right"),
        ("time", "right"),
        ("rate", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=True)
    for summary in summaries:
        weights = f"[bold red]{summary.weights_label}[/]" if summary.random_weights else summary.weights_label
        failures = f"[bold red]{summary.failures}[/]" if summary.failures else "0"
        rate = f"{summary.rate:.3g} img/s" if summary.rate else "-"
        table.add_row(
            summary.backbone,
            weights,
            summary.status,
            str(summary.rows),
            failures,
            f"{summary.seconds:.1f} s",
            rate,
        )
    console.print(table)
    for summary in summaries:
        console.print(f"{summary.backbone}: {summary.path}", soft_wrap=True)
    for summary in summaries:
        if summary.failures:
            _print_failures(summary, console)
    if any(summary.random_weights for summary in summaries):
        console.rule(style="bold red")
        console.print(RANDOM_BANNER, style="bold white on red", soft_wrap=True)
        console.rule(style="bold red")


def _print_failures(summary: ExtractSummary, console) -> None:
    """Name the first failed images with their reasons, and where the full list is."""
    from rich.markup import escape

    console.print(
        f"[bold red]{summary.backbone}[/]: {summary.failures} image(s) could not be read; they are stored as zero "
        "rows with ok=False, which classify leaves out:",
        soft_wrap=True,
    )
    for path, reason in summary.failed_images:
        console.print(f"  {escape(path)}: {escape(reason)}", soft_wrap=True, highlight=False)
    more = summary.failures - len(summary.failed_images)
    console.print(
        f"  {f'... and {more} more; ' if more > 0 else ''}the full list (path, reason) is in {summary.errors_csv}",
        soft_wrap=True,
        highlight=False,
    )


def extract_command(config: ExtractConfig, console) -> None:
    """`featx extract`: run stage one and print the summary table (with the random-weights banner when due)."""
    from featx.config import featx_command

    summaries = run_extract(config, console=console)
    print_summary(summaries, console)
    console.print(
        f"Next: {featx_command()} classify --features {config.out_dir} --out results", soft_wrap=True, highlight=False
    )
