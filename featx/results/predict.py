"""A saved model bundle -> predictions for new images, end to end.

The bundle (results/models/<run>.joblib, docs/internals.md) records how its
embeddings were made: backbone, weights (imagenet, random from a seed, or a file
pinned by sha256), image size, resize mode, pooling and preprocessing. Predict
rebuilds exactly that backbone, or refuses with the reason; it never substitutes
other weights. A joblib bundle runs code when it is loaded: load trusted files only.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from featx.classify.scoring import class_probabilities
from featx.engines import LOCAL, EngineConfig
from featx.errors import BackboneError, BundleError, FeatxError, WeightsError
from featx.extract.backbones import RANDOM_BANNER
from featx.extract.work import ModelRecipe
from featx.files import atomic_write_bytes, missing_reason, walk_files
from featx.results.records import load_bundle


def _weights_file(bundle: dict, bundle_path: Path) -> Path:
    """Where the bundle's weights file is: its recorded path, else beside the bundle, the results or the working folder."""
    name = str(bundle["weights"])
    expected = str(bundle.get("weights_sha256") or "")
    candidates = []
    if bundle.get("weights_path"):
        candidates.append(Path(bundle["weights_path"]))
    candidates += [
        Path(name),
        bundle_path.parent / name,
        bundle_path.parent.parent / name,
        bundle_path.parent.parent.parent / name,
    ]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise BundleError(
            f"The backbone of '{bundle_path}' used the weights file '{name}', which is not beside the bundle, in its "
            "results folder or in the working folder; put that exact file there to rebuild the backbone."
        )
    from featx.extract.backbones import resolve_weights

    info = resolve_weights(str(found))
    if expected and info.sha256 != expected:
        raise BundleError(
            f"The weights file '{found}' has sha256 {info.sha256[:12]}…, but the backbone of '{bundle_path}' was built "
            f"from {expected[:12]}…; predict needs the identical file."
        )
    return found


def _weights_info(bundle: dict, bundle_path: Path, spec):
    from featx.extract.backbones import WeightsInfo, resolve_weights

    weights = str(bundle["weights"])
    if weights == "none":
        if not spec.weightless:
            raise BundleError(f"Model bundle '{bundle_path}' records no weights for {spec.name!r}, which needs some.")
        return resolve_weights("none", spec=spec)
    if weights == "random":
        seed = bundle.get("weights_seed")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise BundleError(
                f"Model bundle '{bundle_path}' used random weights but records no seed (weights_seed={seed!r}); "
                "its backbone cannot be rebuilt."
            )
        return WeightsInfo(kind="random", label="random", sha256="", seed=int(seed))
    if spec.source in ("keras-hub", "onnx"):  # a preset or an ONNX file: the identical files, checked by sha256
        info = resolve_weights("pretrained", spec=spec)
        expected = str(bundle.get("weights_sha256") or "")
        if expected and info.sha256 != expected:
            raise BundleError(
                f"The weights of {spec.name!r} ({info.label}) have sha256 {info.sha256[:12]}…, but the backbone of "
                f"'{bundle_path}' was built from {expected[:12]}…; predict needs the identical files."
            )
        return info
    if weights == "imagenet":
        if not spec.imagenet_weights:
            raise BundleError(
                f"Model bundle '{bundle_path}' claims ImageNet weights for {spec.name!r}, which has none."
            )
        # not cached: create_backbone tries Keras's download and says where to put the file when that fails
        return WeightsInfo(kind="imagenet", label="imagenet", sha256="", seed=-1)
    return resolve_weights(str(_weights_file(bundle, bundle_path)))


def backbone_recipe(bundle: dict, bundle_path) -> ModelRecipe:
    """How to rebuild the bundle's backbone identically (checked here); BundleError with the reason otherwise."""
    from featx.extract.backbones import get_backbone

    bundle_path = Path(bundle_path)
    if bundle["backbone"] == "metadata":  # issue 17: classify/metadata_floor.py
        raise BundleError(
            f"Model bundle '{bundle_path}' is the metadata-only floor: it predicts from manifest metadata columns, "
            "not from images; predict with the bundle of an image backbone's run."
        )
    try:
        spec = get_backbone(bundle["backbone"])
    except BackboneError:
        raise BundleError(
            f"Model bundle '{bundle_path}' uses backbone {bundle['backbone']!r}, which this featx does not register."
        ) from None
    from featx.extract.backbones import preprocess_of

    weights = _weights_info(bundle, bundle_path, spec)
    recorded = bundle.get("preprocess")
    if recorded is not None and recorded != preprocess_of(spec, weights):
        raise BundleError(
            f"Model bundle '{bundle_path}' was made with {spec.name!r} preprocessing {recorded!r}, but this featx "
            f"uses {preprocess_of(spec, weights)!r}; the embeddings would differ."
        )
    return ModelRecipe(spec.name, weights, tuple(bundle["image_size"]), (bundle["pooling"],))


@contextmanager
def _rebuilding(bundle_path):
    """A backbone that fails to build (weights not cached and not downloadable...) is the bundle's problem."""
    try:
        yield
    except (WeightsError, BackboneError) as error:
        raise BundleError(f"The backbone of '{bundle_path}' cannot be rebuilt identically: {error}") from None


def rebuild_backbone(bundle: dict, bundle_path):
    """The bundle's backbone, identical to the one that made its embeddings; BundleError with the reason otherwise."""
    from featx.extract.backbones import create_backbone, get_backbone

    recipe = backbone_recipe(bundle, bundle_path)
    with _rebuilding(bundle_path):
        return create_backbone(get_backbone(recipe.backbone), recipe.weights, recipe.image_size, recipe.poolings)


# ---------------------------------------------------------------- inputs


def _manifest_paths(csv_path: Path, data_root) -> list:
    from featx.data.manifest import read_path_column, resolve_path
    from featx.data.storage import is_url, open_data_root

    if is_url(data_root):  # paths inside the data root's filesystem, read through it by whoever decodes
        opened = open_data_root(data_root)
        return [opened.resolve(rel) for rel in read_path_column(csv_path)]
    root = Path(data_root) if data_root is not None else csv_path.parent
    return [resolve_path(root, rel) for rel in read_path_column(csv_path)]


def _data_root_options(inputs, data_root) -> dict:
    """What the decode needs to read the inputs: the filesystem of a URL data root (which only manifests use)."""
    from featx.data.storage import is_url, open_data_root

    if not is_url(data_root):
        return {}
    others = [str(item) for item in inputs if not (Path(item).suffix.lower() == ".csv" and Path(item).is_file())]
    if others:
        raise FeatxError(
            f"--data-root {data_root} is a URL, which only manifest CSVs resolve against; got {others[0]!r}: "
            "predict it in a separate command without --data-root."
        )
    return open_data_root(data_root).decode_options


def collect_inputs(inputs, data_root=None) -> list:
    """Image files as given, image files under folders (recursive, sorted), and the rows of manifest CSVs.

    Manifest rows resolve against `data_root` (default: the CSV's folder); a URL data root (file://,
    s3://, memory://, ...) gives paths inside its fsspec filesystem.
    """
    from featx.data.manifest import IMAGE_SUFFIXES as suffixes
    from featx.data.manifest import is_image_file

    paths: list = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += [file for file in walk_files(path) if is_image_file(file)]
        elif path.suffix.lower() == ".csv" and path.is_file():
            paths += _manifest_paths(path, data_root)
        elif path.exists():
            paths.append(path)
        else:
            reason = missing_reason(path)
            what = "does not exist" if reason == "file not found" else f"cannot be read ({reason})"
            raise FeatxError(f"Input '{item}' {what}; pass image files, folders of images or a manifest CSV.")
    if not paths:
        raise FeatxError(f"No images ({', '.join(suffixes)}) found in {[str(i) for i in inputs]}.")
    return paths


# ---------------------------------------------------------------- predicting


def _threshold_value(threshold) -> float | None:
    if isinstance(threshold, dict):
        threshold = threshold.get("value")
    return None if threshold is None else float(threshold)


def _labels(bundle: dict, proba: np.ndarray) -> list[str]:
    classes = [str(c) for c in bundle["classes"]]
    task = bundle["task"]
    if task == "binary":
        threshold = _threshold_value(bundle["threshold"])
        threshold = 0.5 if threshold is None else threshold
        return [classes[1] if p >= threshold else classes[0] for p in proba[:, 1]]
    if task == "multiclass":
        return [classes[k] for k in proba.argmax(axis=1)]
    thresholds = bundle["threshold"]
    if isinstance(thresholds, dict):
        thresholds = thresholds.get("value")
    cut = np.broadcast_to(np.asarray(0.5 if thresholds is None else thresholds, dtype=float), (proba.shape[1],))
    return ["|".join(c for c, on in zip(classes, row >= cut) if on) for row in proba]


def predict_paths(
    bundle_path,
    inputs,
    data_root=None,
    batch_size=32,
    progress=None,
    bundle=None,
    engine: EngineConfig = LOCAL,
    console=None,
) -> list[dict]:
    """One dict per image: path, p_<class> per class, predicted_label, error (None when it was read).

    Unreadable images get their reason in `error` and None probabilities; the rest
    are still predicted. `progress` (optional) is called with the number of images done.
    `bundle`: the bundle at bundle_path already loaded with records.load_bundle (else it is loaded here).
    The images are embedded by `engine` (featx/engines) in whole batches, as stage one embeds
    them, and the classifier sees them batch by batch either way.
    """
    from rich.console import Console

    from featx.data.dicom import DEFAULT_WINDOW
    from featx.engines import get_engine
    from featx.extract.work import EmbedRequest

    bundle_path = Path(bundle_path)
    if bundle is None:
        bundle = load_bundle(bundle_path)
    paths = collect_inputs([str(i) for i in inputs], data_root)
    recipe = backbone_recipe(bundle, bundle_path)
    window = bundle.get("dicom_window", "none")  # "none": trained without DICOM rows; DICOM inputs get the default
    window = DEFAULT_WINDOW if window in (None, "none") else window
    request = EmbedRequest(
        paths=paths,
        image_size=recipe.image_size,
        resize_mode=bundle["resize_mode"],
        batch_size=batch_size,
        recipes={recipe.backbone: recipe},
        first_rows={recipe.backbone: 0},
        decode_options={"dicom_window": window, **_data_root_options(inputs, data_root)},
    )
    classes = [str(c) for c in bundle["classes"]]
    rows: list[dict] = []
    with _rebuilding(bundle_path), get_engine(engine).open(request, console or Console(quiet=True)) as embedded:
        for embedded_rows in embedded:
            _, embeddings, ok_rows, errors, _ = embedded_rows.part(recipe.backbone)
            reasons = dict(errors)
            # a Ray range holds several batches: the classifier gets them one batch at a time, as locally
            for lo in range(0, len(ok_rows), batch_size):
                start = embedded_rows.start + lo
                ok = ok_rows[lo : lo + batch_size]
                proba = np.empty((0, len(classes)))
                labels: list[str] = []
                if ok.any():
                    batch_embeddings = embeddings[bundle["pooling"]][lo : lo + batch_size][ok]
                    proba = class_probabilities(bundle["estimator"], batch_embeddings, bundle["task"])
                    labels = _labels(bundle, proba)
                rows += _records(paths, start, ok, proba, labels, classes, reasons)
                if progress is not None:
                    progress(len(ok))
    return rows


def predict_embeddings(bundle: dict, X: np.ndarray) -> list[dict]:
    """One dict per embedding row: p_<class> per class and predicted_label, as predict_paths gives for images.

    `X` must be made like the run's embeddings (same backbone, weights, size and pooling); its width is checked.
    """
    classes = [str(c) for c in bundle["classes"]]
    X = np.asarray(X, dtype=np.float32)
    width = getattr(bundle["estimator"], "n_features_in_", None)
    if X.ndim != 2 or (width is not None and X.shape[1] != int(width)):
        raise FeatxError(
            f"The embeddings have shape {X.shape}, but {bundle['run_id']} takes (n, {width}) rows of "
            f"{bundle['backbone']} / {bundle['pooling']} embeddings."
        )
    proba = class_probabilities(bundle["estimator"], X, bundle["task"])
    labels = _labels(bundle, proba)
    return [
        {**{f"p_{c}": float(proba[i, k]) for k, c in enumerate(classes)}, "predicted_label": labels[i]}
        for i in range(len(labels))
    ]


def _records(paths, start, ok, proba, labels, classes, reasons) -> list[dict]:
    records, done = [], 0
    for row, read in enumerate(ok, start=start):
        record: dict[str, object] = {"path": str(paths[row])}
        if read:
            record.update({f"p_{c}": float(proba[done, k]) for k, c in enumerate(classes)})
            record["predicted_label"] = labels[done]
            record["error"] = None
            done += 1
        else:
            record.update({f"p_{c}": None for c in classes})
            record["predicted_label"] = None
            record["error"] = reasons.get(row, "could not be read")
        records.append(record)
    return records


PROBABILITY_DECIMALS = 6  # the CSV's probabilities and threshold: 0.000002, not 1.5497207641601562e-06


def _decimal(value: float) -> str:
    return f"{value:.{PROBABILITY_DECIMALS}f}"


def threshold_text(bundle: dict) -> str:
    """The rule behind predicted_label, as the CSV's `threshold` column says it: binary, the cut on
    p_<positive class> (label = positive class when p >= it); multi-label, the cut of each class in class
    order joined by '|' (one number when they share it); multi-class, 'argmax' (the most probable class)."""
    task = bundle["task"]
    if task == "multiclass":
        return "argmax"
    if task == "binary":
        value = _threshold_value(bundle["threshold"])
        return _decimal(0.5 if value is None else value)
    thresholds = bundle["threshold"]
    if isinstance(thresholds, dict):
        thresholds = thresholds.get("value")
    values = np.atleast_1d(np.asarray(0.5 if thresholds is None else thresholds, dtype=float))
    return "|".join(_decimal(v) for v in values)


def _csv_text(rows: list[dict], bundle: dict) -> str:
    """CSV columns: path, p_<class>..., predicted_label, threshold (threshold_text), error, model, weights."""
    buffer = io.StringIO()
    keys = list(rows[0].keys())
    columns = [*keys[: keys.index("predicted_label") + 1], "threshold", *keys[keys.index("predicted_label") + 1 :]]
    writer = csv.DictWriter(buffer, fieldnames=[*columns, "model", "weights"], lineterminator="\n")
    writer.writeheader()
    weights = "random-init" if bundle["weights"] == "random" else bundle["weights"]
    threshold = threshold_text(bundle)
    for row in rows:
        cells = {k: ("" if v is None else _decimal(v) if isinstance(v, float) else v) for k, v in row.items()}
        writer.writerow({**cells, "threshold": threshold, "model": bundle["run_id"], "weights": weights})
    return buffer.getvalue()


def _json_text(rows: list[dict], bundle: dict) -> str:
    random_weights = bundle["weights"] == "random"
    document = {
        "model": bundle["run_id"],
        "backbone": bundle["backbone"],
        "pooling": bundle["pooling"],
        "classifier": bundle.get("classifier", bundle["run_id"].split("__")[-1]),
        "weights": bundle["weights"],
        "weights_seed": bundle["weights_seed"],
        "random_weights": random_weights,
        "warning": RANDOM_BANNER if random_weights else None,
        "task": bundle["task"],
        "classes": [str(c) for c in bundle["classes"]],
        "threshold": _threshold_value(bundle["threshold"]) if bundle["task"] == "binary" else bundle["threshold"],
        "predictions": rows,
    }
    return json.dumps(document, indent=2) + "\n"


def predict_command(model, inputs, data_root, out, as_json, batch_size, console, engine: EngineConfig = LOCAL) -> None:
    """`featx predict`: predictions as CSV (or JSON) to --out or stdout; messages go to stderr when stdout is the output."""
    from rich.console import Console

    from featx.progress import progress_bar

    messages = console if out is not None else Console(stderr=True)
    bundle = load_bundle(model, warn=lambda text: messages.print(f"[yellow]warning:[/] {text}", soft_wrap=True))
    if bundle["weights"] == "random":
        messages.print(f"[bold white on red] {RANDOM_BANNER} [/]")
    n_images = len(collect_inputs([str(i) for i in inputs], data_root))
    with progress_bar(messages, unit="img", transient=True) as bar:
        task = bar.add_task("predict", total=n_images)
        rows = predict_paths(
            model,
            inputs,
            data_root,
            batch_size,
            progress=lambda n: bar.advance(task, n),
            bundle=bundle,
            engine=engine,
            console=messages,
        )
    text = _json_text(rows, bundle) if as_json else _csv_text(rows, bundle)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        out = Path(out)
        atomic_write_bytes(out, text.encode("utf-8"))  # Ctrl-C or a crash never leaves half a file
    failed = [r for r in rows if r["error"]]
    summary = f"{len(rows) - len(failed)} of {len(rows)} image(s) predicted with {bundle['run_id']}"
    if out is not None:
        summary += f" -> {out}"
    messages.print(summary)
    for row in failed[:10]:
        messages.print(f"[yellow]could not read[/] {row['path']}: {row['error']}")
    if len(failed) > 10:
        messages.print(f"... and {len(failed) - 10} more (see the error column)")
