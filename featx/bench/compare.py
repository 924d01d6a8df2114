"""`featx bench compare`: the seeds' way (a backbone inside a Keras model, a head trained on images for N epochs)
against featx's way (embed once, then classify the cached embeddings), on the same real images and split.

The seeds' way is what the source reports did: a Keras model holding the frozen backbone
and a dense head (batch normalisation, dropout, Dense(1024, ReLU), dropout, softmax), trained with
`model.fit` for N epochs on the images, validated on held-out training patients after
every epoch, so every epoch pushes every training image through the backbone again.
featx's way is `featx extract` (each image through the backbone once) followed by
`featx classify --classifier dense` (the default dense grid, patient-grouped 5-fold CV,
out-of-fold threshold, refit) on the cached embeddings. Both are scored on the same
held-out test patients (AUC with DeLong 95% CIs). Compute is counted in backbone forward
passes, the cost that dominates both; the heads are tiny beside a backbone.

The images are decoded once into memory for the seeds' way (generous to it: its reports
decoded every epoch). A benchmark reports numbers; it asserts nothing.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kermany224" / "train"
VALIDATION_FRACTION = 0.15  # of the training patients: the seeds' way's per-epoch validation set


@dataclass(frozen=True)
class CompareConfig:
    data_root: Path = DEFAULT_DATA_ROOT
    images: int = 1000
    image_size: int = 128
    backbone: str = "resnet50"
    weights: str = "random"
    epochs: int = 10
    batch_size: int = 32
    test_fraction: float = 0.2
    seed: int = 0
    workdir: Path | None = None


@dataclass(frozen=True)
class WayResult:
    name: str
    forward_passes: int
    seconds: float
    parts: dict  # step -> seconds
    auc: dict  # evaluate.delong_ci(...)
    note: str


def subset_manifest(config: CompareConfig, folder: Path) -> tuple[Path, dict]:
    """A manifest of `config.images` rows of the data root, split train/test by patient (seeded)."""
    from featx.data.manifest import scan, write_manifest
    from featx.errors import FeatxError

    result = scan(
        config.data_root,
        dataset="auto",
        split_policy="patient-holdout",
        test_fraction=config.test_fraction,
        seed=config.seed,
    )
    rows = result.rows
    if config.images > len(rows):
        raise FeatxError(
            f"--images {config.images} is more than the {len(rows)} images under '{config.data_root}'; "
            f"pass at most {len(rows)}."
        )
    rng = np.random.default_rng(config.seed)
    chosen = sorted(rng.choice(len(rows), size=config.images, replace=False))
    subset = [rows[i] for i in chosen]
    manifest = write_manifest(subset, folder / "manifest.csv")
    splits = {split: sum(1 for row in subset if row["split"] == split) for split in ("train", "test")}
    patients = {split: len({row["patient_id"] for row in subset if row["split"] == split}) for split in splits}
    return manifest, {"rows": len(subset), "images": splits, "patients": patients, "parser": result.parser}


def featx_way(config: CompareConfig, manifest: Path, folder: Path, console) -> WayResult:
    """`featx extract` then `featx classify --classifier dense`: each image through the backbone once."""
    from featx.classify.stage import ClassifyConfig, run_classify
    from featx.extract.stage import ExtractConfig, run_extract
    from featx.results import records

    started = time.perf_counter()
    [summary] = run_extract(
        ExtractConfig(
            backbones=(config.backbone,),
            manifest=manifest,
            data_root=config.data_root,
            out_dir=folder / "features",
            weights=config.weights,
            image_size=config.image_size,
            batch_size=config.batch_size,
            seed=config.seed,
            force=True,
        ),
        console,
    )
    extract_s = time.perf_counter() - started
    started = time.perf_counter()
    results = folder / "results"
    run_classify(
        ClassifyConfig(
            features_dir=folder / "features",
            out_dir=results,
            classifiers=("dense",),
            cv=5,
            seed=config.seed,
            force=True,
        ),
        records.RunWriter(results),
        console,
    )
    classify_s = time.perf_counter() - started
    [run] = records.load_runs(results)
    return WayResult(
        "featx: extract once + classify dense",
        forward_passes=summary.rows,
        seconds=extract_s + classify_s,
        parts={"extract": extract_s, "classify dense": classify_s},
        auc=run["test"]["auc"],
        note=(
            f"default dense grid ({run['search']}), 5-fold patient-grouped CV, best {run['best_params']}, "
            f"CV AUC {run['cv_auc_mean']:.3f}"
        ),
    )


def _load_images(manifest: Path, config: CompareConfig) -> dict:
    from featx.data.images import iter_batches
    from featx.data.manifest import read_manifest

    table = read_manifest(manifest)
    paths = [config.data_root / path for path in table.paths]
    size = (config.image_size, config.image_size)
    images = np.zeros((len(paths), *size, 3), dtype=np.float32)
    for batch in iter_batches(paths, size, batch_size=64):
        images[batch.start : batch.start + len(batch.images)] = batch.images
    return {
        "X": images,
        "y": table.label_array().astype(np.int32),
        "split": np.asarray(table.splits),
        "patient": np.asarray(table.patient_ids),
    }


def seeds_way(config: CompareConfig, manifest: Path, console) -> WayResult:
    """A Keras model with the frozen backbone inside and a dense head, trained `epochs` epochs on the images."""
    from featx.classify.evaluate import delong_ci
    from featx.data.holdout import holdout_patients
    from featx.extract.backbones import create_backbone, get_backbone, resolve_weights
    from featx.progress import progress_bar
    from featx.runtime import import_tensorflow_quietly

    started = time.perf_counter()
    data = _load_images(manifest, config)
    decode_s = time.perf_counter() - started

    train = np.flatnonzero(data["split"] == "train")
    test = np.flatnonzero(data["split"] == "test")
    strata = {str(p): str(label) for p, label in zip(data["patient"][train], data["y"][train])}
    # another seed than the test split's: with the same one, every training patient drew above the test fraction
    held = holdout_patients(strata, VALIDATION_FRACTION, config.seed + 1)
    in_valid = np.isin(data["patient"][train].astype(str), sorted(held))
    fit_rows, valid_rows = train[~in_valid], train[in_valid]

    import_tensorflow_quietly()
    import keras

    started = time.perf_counter()
    spec = get_backbone(config.backbone)
    size = (config.image_size, config.image_size)
    backbone = create_backbone(spec, resolve_weights(config.weights, config.seed, spec, size), size, poolings=("avg",))
    backbone.trainable = False
    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input(shape=(*size, 3), dtype="float32")
    x = backbone(inputs, training=False)["avg"]
    # random-init activations are far from unit scale (featx's head standardises inside); without this the
    # head barely learns, which would be a scaling artifact rather than the procedure being compared
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(1024, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")

    per_epoch = len(fit_rows) + len(valid_rows)
    with progress_bar(console, unit="img", transient=True) as progress:
        bar = progress.add_task(f"seeds' way: {config.epochs} epochs", total=config.epochs * per_epoch + len(test))

        class Count(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                progress.advance(bar, config.batch_size)

            def on_epoch_end(self, epoch, logs=None):
                progress.update(bar, completed=(epoch + 1) * per_epoch)

        model.fit(
            data["X"][fit_rows],
            data["y"][fit_rows],
            batch_size=config.batch_size,
            epochs=config.epochs,
            validation_data=(data["X"][valid_rows], data["y"][valid_rows]),
            callbacks=[Count()],
            verbose=0,
            shuffle=True,
        )
        score = np.asarray(model.predict(data["X"][test], batch_size=config.batch_size, verbose=0))[:, 1]
        progress.update(bar, completed=config.epochs * per_epoch + len(test))
    train_s = time.perf_counter() - started
    return WayResult(
        f"seeds' way: backbone inside, head trained {config.epochs} epochs on images",
        forward_passes=config.epochs * per_epoch + len(test),
        seconds=decode_s + train_s,
        parts={"decode once": decode_s, "fit + predict": train_s},
        auc=delong_ci(data["y"][test], score),
        note=(
            f"{len(fit_rows)} training + {len(valid_rows)} validation images ({VALIDATION_FRACTION:.0%} of the "
            f"training patients) per epoch, then {len(test)} test images; BatchNorm + Dropout 0.5 + Dense 1024 + "
            f"Dropout 0.5 + softmax, Adam 1e-3, batch {config.batch_size}"
        ),
    )


def _auc_text(auc: dict) -> str:
    return f"{auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]"


def bench_compare_command(config: CompareConfig, console) -> dict:
    """Run both ways on the same images and split; print forward passes, wall time and test AUC side by side."""
    from rich.table import Table

    from featx.errors import FeatxError
    from featx.extract.backbones import get_backbone

    get_backbone(config.backbone)
    if not Path(config.data_root).is_dir():
        raise FeatxError(
            f"The data root '{config.data_root}' does not exist; pass --data-root with a label/file folder of images "
            "(e.g. ../shared/data/kermany224/train)."
        )
    if config.epochs < 1 or config.images < 10:
        raise FeatxError("--epochs must be at least 1 and --images at least 10.")
    scratch = Path(config.workdir) if config.workdir is not None else Path(tempfile.mkdtemp(prefix="featx-compare-"))
    try:
        manifest, subset = subset_manifest(config, scratch)
        console.print(
            f"[bold]featx bench compare[/]: {config.backbone} ({config.weights} weights) at {config.image_size} px, "
            f"{subset['rows']} real images of {config.data_root} ({subset['images']['train']} train / "
            f"{subset['images']['test']} test images of {subset['patients']['train']} / {subset['patients']['test']} "
            f"patients, split by patient, seed {config.seed}), {config.epochs} epochs for the seeds' way."
        )
        console.rule("featx's way: extract once, classify the cached embeddings")
        ours = featx_way(config, manifest, scratch, console)
        console.rule("the seeds' way: the backbone inside the model, trained on images")
        seeds = seeds_way(config, manifest, console)
    finally:
        if config.workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    table = Table(title=f"seeds' way vs featx, {config.backbone} {config.weights}, {config.image_size} px")
    for column in ("", "seeds' way", "featx", "seeds / featx"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row(
        "backbone forward passes",
        f"{seeds.forward_passes:,}",
        f"{ours.forward_passes:,}",
        f"{seeds.forward_passes / ours.forward_passes:.1f}x",
    )
    table.add_row(
        "wall time (s)", f"{seeds.seconds:.1f}", f"{ours.seconds:.1f}", f"{seeds.seconds / ours.seconds:.1f}x"
    )
    for way in (seeds, ours):
        for step, seconds in way.parts.items():
            table.add_row(
                f"  {step}", f"{seconds:.1f}" if way is seeds else "", f"{seconds:.1f}" if way is ours else "", ""
            )
    table.add_row("test AUC [95% CI, DeLong]", _auc_text(seeds.auc), _auc_text(ours.auc), "")
    heads = dense_grid_size()
    search_ratio = heads * seeds.forward_passes / ours.forward_passes
    table.add_row("head configurations tried", "1", f"{heads} (5-fold CV)", "")
    table.add_row(
        f"forward passes to try {heads} heads",
        f"{heads * seeds.forward_passes:,}",
        f"{ours.forward_passes:,}",
        f"{search_ratio:.0f}x",
    )
    console.print(table)
    console.print(f"seeds' way: {seeds.note}.")
    console.print(f"featx: {ours.note}.")
    ratio = seeds.forward_passes / ours.forward_passes
    console.print(
        f"featx's compute saving: [bold]{ratio:.1f}x[/] fewer backbone forward passes "
        f"({seeds.seconds / ours.seconds:.1f}x less wall time). The seeds' way costs epochs x training images "
        "+ test images; featx costs each image once, however many classifiers and grid points follow: "
        f"trying featx's {heads} dense heads the seeds' way would take {search_ratio:.0f}x its forward passes."
    )
    return {"seeds": seeds, "featx": ours, "subset": subset, "forward_ratio": ratio, "search_ratio": search_ratio}


def dense_grid_size() -> int:
    """Head configurations in featx's default dense grid (what `featx classify --classifier dense` searches)."""
    from featx.classify.registry import build_classifier, grid_size

    return grid_size(build_classifier("dense", "binary", 2)[1])
