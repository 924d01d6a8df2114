"""featx from Python: the public API at the package top (`featx.__all__`), the one implementation the CLI calls.

    >>> import featx
    >>> features = featx.extract("data/manifest.csv", "data", backbone="resnet50", weights="random")
    >>> board = featx.classify(features, out="results", classifiers=["logreg"])
    >>> board.to_pandas()                       # the columns of results/leaderboard.csv
    >>> model = featx.load_model(board.bundle())  # the best run's model
    >>> model.predict(["xray1.png", "xray2.png"])

Keyword options beyond the named parameters go straight into the stage's frozen config dataclass
(`featx.extract.stage.ExtractConfig`, `featx.classify.stage.ClassifyConfig`): a new field there is a new
option here without any edit of this module. Mistakes raise `featx.errors.FeatxError` subclasses with the
sentence the command line prints. Progress bars and summaries are rich's, which draws widgets in Jupyter
(with ipywidgets installed) and plain bars in a terminal; `verbose=False` silences them.

Importing this module stays light: every stage, TensorFlow and pandas are imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from featx.errors import BundleError, FeatxError, ResultsError, closest, one_of_message

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from rich.console import Console

# `featx.extract` and `featx.classify` name both a stage subpackage and an API function. The (empty) subpackages
# are loaded here, before featx/__init__.py binds the functions over their names, so a later
# `from featx.extract import store` finds the package in sys.modules and never rebinds `featx.extract`.
# (Import submodules with `from featx.extract import stage`; `import featx.extract.stage` then
# `featx.extract.stage` would find the function.)
importlib.import_module("featx.extract")
importlib.import_module("featx.classify")

__all__ = [
    "Features",
    "Leaderboard",
    "Model",
    "classify",
    "export",
    "extract",
    "leaderboard",
    "load_features",
    "load_model",
]

# ---------------------------------------------------------------- shared plumbing


def _console(verbose) -> Console:
    """True: a console on stdout (rich detects Jupyter), False: a silent one, a Console: that one."""
    from rich.console import Console

    if isinstance(verbose, Console):
        return verbose
    if not verbose:
        return Console(quiet=True)
    console = Console()
    if console.is_jupyter and importlib.util.find_spec("ipywidgets") is None:
        # rich draws live bars in Jupyter as ipywidgets (pip install 'featx[notebook]'); without them it would only
        # warn, so the bars and tables print as text when they finish
        console = Console(force_jupyter=False)
    return console


def _names(value) -> tuple[str, ...]:
    """'a,b' or ['a', 'b'] -> ('a', 'b')."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(part) for part in value)


def _coerce(name: str, annotation: str, value):
    """The value a notebook user naturally passes, in the type the config field holds."""
    from featx.engines import EngineConfig

    if name == "engine" and isinstance(value, str):
        return EngineConfig(name=value)
    if "tuple[str" in annotation and isinstance(value, (str, list, tuple)):
        return _names(value)
    if "tuple[" in annotation and isinstance(value, (list, tuple)):
        return tuple(value)
    if annotation.startswith("Path") and isinstance(value, str) and "str" not in annotation:
        return Path(value)
    return value


def _config(cls, where: str, given: Mapping[str, Any], options: Mapping[str, Any]):
    """cls(**given, **options) with each option checked to be a field of cls and coerced to its type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = sorted(name for name in fields if name not in given)
    values = dict(given)
    for name, value in options.items():
        if name not in allowed:
            near = closest(name, allowed)
            raise FeatxError(
                f"featx.{where}() has no option {name!r}; its options are the fields of {cls.__name__}: {allowed}"
                + (f" (did you mean {near!r}?)." if near else ".")
            )
        values[name] = _coerce(name, str(fields[name].type), value)
    return cls(**values)


# ---------------------------------------------------------------- stage one


def extract(
    manifest,
    data_root,
    backbone,
    out="features",
    *,
    pixels: bool = True,
    verbose: bool | Console = True,
    **options,
) -> Path:
    """Embed every manifest image once per backbone into ``<out>/<backbone>.h5`` (stage one).

    A backbone whose complete cache matches the request is a no-op hit; an interrupted run resumes.

    Parameters
    ----------
    manifest : path-like
        The manifest CSV (columns path, label, split, patient_id; see `featx manifest scan`).
    data_root : path-like or str
        The folder the manifest paths are relative to, or an fsspec URL of one.
    backbone : str or sequence of str
        Backbone name(s) (``featx backbones`` lists them); a string may hold several, comma-separated.
    out : path-like, default "features"
        The folder of the caches.
    pixels : bool, default True
        Also extract the raw-pixel floor (the ``pixels`` backbone), so every leaderboard shows what a
        backbone adds over raw pixels.
    verbose : bool or rich.console.Console, default True
        Show progress bars and the summary table (False: silent; a Console: print there).
    **options
        Any field of `featx.extract.stage.ExtractConfig`: ``weights`` ("imagenet", "random", "auto" or a
        weights file), ``poolings`` ("avg,max" or a list), ``image_size``, ``resize_mode``, ``batch_size``,
        ``force``, ``seed``, ``workers``, ``limit``, ``engine`` ("local", "ray" or an EngineConfig), ...

    Returns
    -------
    pathlib.Path
        `out`, the folder to pass to `classify`.

    Raises
    ------
    featx.errors.FeatxError
        A subclass naming what was wrong (manifest, backbone, weights, cache), with the message the
        command line prints; also for an option that is not an ExtractConfig field.
    """
    from featx.extract.stage import ExtractConfig, extract_command, with_pixel_floor

    backbones = _names(backbone)
    config = _config(
        ExtractConfig,
        "extract",
        {
            "backbones": with_pixel_floor(backbones) if pixels else backbones,
            "manifest": Path(manifest),
            "data_root": data_root if isinstance(data_root, str) else Path(data_root),
            "out_dir": Path(out),
        },
        options,
    )
    extract_command(config, console=_console(verbose))
    return Path(out)


@dataclass(frozen=True, eq=False)
class Features:
    """One pooling of an embedding cache, in manifest order: what `load_features` returns.

    Attributes
    ----------
    X : numpy.ndarray
        (N, D) float32 embeddings.
    y : numpy.ndarray
        (N,) class index, or (N, K) 0/1 for a multi-label task.
    classes : tuple of str
    ids : numpy.ndarray
        (N,) manifest path of each row.
    split : numpy.ndarray
        (N,) "train", "val" or "test".
    patient_id : numpy.ndarray
    ok : numpy.ndarray
        (N,) False where the image could not be read (its row is zeros; classify leaves it out).
    metadata : dict of str to numpy.ndarray
        The manifest's metadata columns (sex, age, view, ...), as text.
    backbone, pooling : str
    path : pathlib.Path
        The cache file.
    attrs : dict
        The cache's attributes (weights, image size, content sha256, ...).
    """

    X: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    ids: np.ndarray
    split: np.ndarray
    patient_id: np.ndarray
    ok: np.ndarray
    metadata: dict[str, np.ndarray]
    backbone: str
    pooling: str
    path: Path
    attrs: dict = field(repr=False)
    _source: Any = field(repr=False, default=None)

    def __repr__(self) -> str:
        splits = dict(zip(*(arr.tolist() for arr in __import__("numpy").unique(self.split, return_counts=True))))
        return (
            f"Features({self.backbone!r}, pooling={self.pooling!r}, X={self.X.shape} {self.X.dtype}, "
            f"classes={list(self.classes)}, split={splits}, metadata={list(self.metadata)}, path='{self.path}')"
        )

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2

    @property
    def labels(self) -> np.ndarray:
        """(N,) class name of each row ("|"-joined names for a multi-label task)."""
        from featx.extract.export import label_names

        return label_names(self.y, self.classes)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def to_pandas(self, embeddings: str = "column") -> pd.DataFrame:
        """One row per image: id, label, y, split, patient_id, ok, the metadata columns, then the embeddings.

        Parameters
        ----------
        embeddings : {"column", "wide", "none"}, default "column"
            "column": one ``embedding`` column holding each row's (D,) float32 array (the layout of
            ``featx export --format parquet``); "wide": one float column per dimension, ``<pooling>_<i>``;
            "none": no embeddings.

        Returns
        -------
        pandas.DataFrame
        """
        from featx.extract.export import feature_frame

        return feature_frame(self._source, embeddings=embeddings)


def load_features(path, pooling: str = "avg") -> Features:
    """Read one pooling of a complete embedding cache, checked against its content sha256.

    Parameters
    ----------
    path : path-like
        A ``<backbone>.h5`` cache written by `extract`.
    pooling : str, default "avg"
        One of the poolings the cache holds.

    Returns
    -------
    Features

    Raises
    ------
    featx.errors.CacheError
        For a missing, unfinished, damaged or other-format cache, or a pooling it lacks.
    """
    from featx.extract import store

    source = store.load(path, pooling)
    return Features(
        X=source.X,
        y=source.y,
        classes=tuple(source.classes),
        ids=source.ids,
        split=source.split,
        patient_id=source.patient_id,
        ok=source.ok,
        metadata=dict(source.meta),
        backbone=source.backbone,
        pooling=source.pooling,
        path=Path(source.path),
        attrs=dict(source.attrs),
        _source=source,
    )


def export(path, out=None, *, format: str = "parquet", pooling: str = "avg") -> Path:
    """Write one pooling of a cache as a file other tools read (pandas, polars, DuckDB, Spark).

    Parameters
    ----------
    path : path-like
        A ``<backbone>.h5`` cache.
    out : path-like, optional
        The file to write; default ``<cache stem>.<pooling>.parquet`` beside the cache.
    format : {"parquet"}
    pooling : str, default "avg"

    Returns
    -------
    pathlib.Path
        The file written: the rows of `Features.to_pandas()` (embeddings as one fixed-size list column),
        with the cache's attributes as JSON in the schema metadata key ``featx``.
    """
    from featx.extract.export import export_features

    return export_features(path, out, format=format, pooling=pooling)


# ---------------------------------------------------------------- stage two and its results


@dataclass(frozen=True, eq=False)
class Leaderboard:
    """The runs of a results folder, ranked per dataset by test AUC: what `classify` returns.

    Attributes
    ----------
    results_dir : pathlib.Path
    rows : list of dict
        One per run, the columns of leaderboard.csv, best first within each dataset.
    runs : list of dict
        The run records (results/runs/*.json) in file-name order.
    """

    results_dir: Path
    rows: list[dict]
    runs: list[dict] = field(repr=False)

    @classmethod
    def load(cls, results_dir) -> Leaderboard:
        """The leaderboard of every run in `results_dir` (ResultsError when there is none)."""
        from featx.results.leaderboard import leaderboard_rows
        from featx.results.records import load_runs

        runs = load_runs(results_dir)
        return cls(Path(results_dir), leaderboard_rows(runs), runs)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def best(self) -> str:
        """The run id ranked first (of the first dataset: the one with most runs)."""
        return str(self.rows[0]["run_id"])

    def to_pandas(self) -> pd.DataFrame:
        """The leaderboard as a DataFrame with the columns of leaderboard.csv, in its row order.

        ``best_params`` holds dicts (leaderboard.csv holds their JSON); missing values are None/NaN.
        """
        import pandas as pd

        from featx.results.leaderboard import CSV_COLUMNS

        return pd.DataFrame([{column: row[column] for column in CSV_COLUMNS} for row in self.rows], columns=CSV_COLUMNS)

    def _repr_html_(self) -> str:
        return str(self.to_pandas()._repr_html_())

    def _run(self, run_id: str | None) -> dict:
        run_id = self.best if run_id is None else run_id
        for run in self.runs:
            if run["run_id"] == run_id:
                return run
        raise ResultsError(one_of_message("run_id", run_id, [str(run["run_id"]) for run in self.runs]))

    def test_predictions(self, run_id: str | None = None) -> pd.DataFrame:
        """The stored test predictions of one run (default: the best).

        Returns
        -------
        pandas.DataFrame
            id, y_true and the score: ``score`` (P(positive class)) for a binary run, ``p_<class>`` per
            class otherwise (``y_true`` then holds the class index, or one 0/1 column per class
            ``y_<class>`` for multi-label), then the test rows' manifest metadata.
        """
        from featx.results.records import test_predictions

        return test_predictions(self._run(run_id))

    def bundle(self, run_id: str | None = None) -> Path:
        """The model bundle of one run (default: the best), for `load_model`."""
        from featx.results.records import bundle_path

        return bundle_path(self.results_dir, self._run(run_id)["run_id"])


def classify(
    features_dir="features",
    out="results",
    classifiers=("logreg", "xgboost", "dense"),
    *,
    verbose: bool | Console = True,
    **options,
) -> Leaderboard:
    """Grid-search classifiers on cached embeddings with patient-grouped CV; test AUC with CIs (stage two).

    Every backbone x pooling x classifier becomes a run (results/runs/<run>.json and a model bundle);
    a run whose inputs are unchanged since it was fitted is reused. Then the leaderboard
    (leaderboard.csv/.md) and report.html are written, and with ``mlflow`` each run is logged.

    Parameters
    ----------
    features_dir : path-like, default "features"
        The folder of ``<backbone>.h5`` caches (what `extract` returns).
    out : path-like, default "results"
        The results folder.
    classifiers : str or sequence of str, default ("logreg", "xgboost", "dense")
    verbose : bool or rich.console.Console, default True
        Show the progress bar, a line per run and the leaderboard (False: silent).
    **options
        Any field of `featx.classify.stage.ClassifyConfig`: ``backbones`` and ``poolings`` (default: every
        cache and pooling found), ``cv``, ``seed``, ``n_jobs``, ``threshold_rule``, ``quick``, ``force``,
        ``train_fractions``, ``subgroups``, ``mlflow`` (a tracking URI, or True for ./mlruns), ...

    Returns
    -------
    Leaderboard
        Every run in `out` (also runs of earlier commands), ranked.

    Raises
    ------
    featx.errors.FeatxError
        With the message the command line prints (no caches, an unknown classifier, one class...).
    """
    from featx.classify import audit, efficiency
    from featx.classify.stage import ClassifyConfig
    from featx.classify.subgroups import parse_age_bands
    from featx.results.finish import classify_command
    from featx.results.tracking import tracking_uri

    options = dict(options)
    if "train_fractions" in options:
        fractions = options["train_fractions"]
        options["train_fractions"] = efficiency.check_fractions(
            cast(Sequence[float], _names(fractions) if isinstance(fractions, str) else fractions)
        )  # check_fractions turns text into numbers, or says which one is not
    if isinstance(options.get("age_bands"), str):
        options["age_bands"] = parse_age_bands(options["age_bands"])
    if "near_duplicate_threshold" in options:
        options["near_duplicate_threshold"] = audit.check_threshold(options["near_duplicate_threshold"])
    if "mlflow" in options:
        options["mlflow"] = tracking_uri(options["mlflow"])
    config = _config(
        ClassifyConfig,
        "classify",
        {"features_dir": Path(features_dir), "out_dir": Path(out), "classifiers": _names(classifiers)},
        options,
    )
    if config.n_jobs is None and config.engine.name == "ray":  # every CPU of the cluster
        config = dataclasses.replace(config, n_jobs=-1)
    classify_command(config, console=_console(verbose))
    return Leaderboard.load(out)


def leaderboard(results_dir="results") -> pd.DataFrame:
    """The leaderboard of a results folder as a DataFrame (the columns of leaderboard.csv).

    Parameters
    ----------
    results_dir : path-like, default "results"

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    featx.errors.ResultsError
        When the folder holds no run, or an unreadable one.
    """
    return Leaderboard.load(results_dir).to_pandas()


# ---------------------------------------------------------------- predicting


class Model:
    """A saved run: its backbone (rebuilt exactly on first use), classifier and threshold.

    Made by `load_model`. A bundle runs code when it is loaded: load trusted files only.

    Attributes
    ----------
    path : pathlib.Path
    run_id, backbone, pooling, classifier, task : str
    classes : list of str
    threshold : float or None
        The decision threshold of a binary run (chosen on out-of-fold scores).
    random_weights : bool
        True when the backbone had random weights (a pipeline check, not ImageNet features).
    """

    def __init__(self, path, bundle: dict):
        self.path = Path(path)
        self._bundle = bundle
        self.run_id = str(bundle["run_id"])
        self.backbone = str(bundle["backbone"])
        self.pooling = str(bundle["pooling"])
        self.classifier = str(bundle.get("classifier", self.run_id.split("__")[-1]))
        self.task = str(bundle["task"])
        self.classes = [str(c) for c in bundle["classes"]]
        threshold = bundle["threshold"]
        threshold = threshold.get("value") if isinstance(threshold, dict) else threshold
        self.threshold = None if threshold is None or self.task != "binary" else float(threshold)
        self.random_weights = bundle["weights"] == "random"

    def __repr__(self) -> str:
        weights = "random-init" if self.random_weights else str(self._bundle["weights"])
        return f"Model({self.run_id!r}, task={self.task!r}, classes={self.classes}, weights={weights!r})"

    def predict(
        self, images, *, data_root=None, batch_size: int = 32, verbose: bool | Console = False, engine=None
    ) -> pd.DataFrame:
        """Embed images with the run's backbone and apply its classifier and threshold.

        Parameters
        ----------
        images : path-like, array or a sequence of them
            Image files, folders of images (recursive), manifest CSVs, or decoded images as uint8
            arrays (H, W) or (H, W, 3) / PIL images (those are written losslessly to a temporary PNG
            and read back by the same decode as files).
        data_root : path-like or str, optional
            The root manifest paths are relative to (default: the CSV's folder).
        batch_size : int, default 32
        verbose : bool or rich.console.Console, default False
        engine : str or featx.engines.EngineConfig, optional
            "ray" embeds on a Ray cluster; default this process.

        Returns
        -------
        pandas.DataFrame
            One row per image, in input order: path (``<array i>`` for arrays), ``p_<class>`` per class,
            predicted_label, error (why an image could not be read, else None): the columns of
            ``featx predict``'s CSV.
        """
        import pandas as pd

        from featx.engines import LOCAL, EngineConfig
        from featx.results.predict import predict_paths

        engine = LOCAL if engine is None else EngineConfig(name=engine) if isinstance(engine, str) else engine
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        with tempfile.TemporaryDirectory(prefix="featx-predict-") as scratch:
            inputs, names = _image_inputs(items, Path(scratch))
            rows = predict_paths(
                self.path,
                inputs,
                data_root,
                batch_size,
                bundle=self._bundle,
                engine=engine,
                console=_console(verbose),
            )
        for row in rows:
            row["path"] = names.get(row["path"], row["path"])
        return pd.DataFrame(rows)

    def predict_embeddings(self, X) -> pd.DataFrame:
        """Apply the classifier and threshold to embeddings made like the run's (e.g. `Features.X`).

        Parameters
        ----------
        X : array-like of shape (n, D)

        Returns
        -------
        pandas.DataFrame
            ``p_<class>`` per class and predicted_label, one row per embedding.
        """
        import numpy as np
        import pandas as pd

        from featx.results.predict import predict_embeddings

        return pd.DataFrame(predict_embeddings(self._bundle, np.asarray(X)))


def _image_inputs(items: Iterable, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """Paths as given; arrays and PIL images written to PNG files in `scratch` (returned names map them back)."""
    import numpy as np
    from PIL import Image

    inputs: list[str] = []
    names: dict[str, str] = {}
    for index, item in enumerate(items):
        if isinstance(item, (Image.Image, np.ndarray)):
            image = item if isinstance(item, Image.Image) else _array_image(item, index)
            path = scratch / f"{index:06d}.png"
            image.save(path)
            inputs.append(str(path))
            names[str(path)] = f"<array {index}>"
        else:
            inputs.append(str(item))
    return inputs, names


def _array_image(array, index: int):
    import numpy as np
    from PIL import Image

    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        raise FeatxError(
            f"Image {index} is an array of dtype {array.dtype} and shape {array.shape}; pass uint8 arrays of "
            "shape (H, W) or (H, W, 3), or image files."
        )
    return Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def load_model(bundle) -> Model:
    """Load a saved run (``results/models/<run>.joblib``) to predict new images or embeddings.

    The bundle's bytes are checked against the sha256 in its run record before it is unpickled; without a
    record to check against a `UserWarning` says so. A bundle runs code when loaded: trusted files only.

    Parameters
    ----------
    bundle : path-like
        results/models/<run>.joblib (`Leaderboard.bundle()` gives the best run's).

    Returns
    -------
    Model

    Raises
    ------
    featx.errors.BundleError
        For a missing, altered, foreign or other-format bundle.
    """
    from featx.results.records import load_bundle

    path = Path(bundle)
    loaded = load_bundle(path, warn=lambda text: warnings.warn(text, UserWarning, stacklevel=3))
    if not isinstance(loaded.get("classes"), Sequence):
        raise BundleError(f"Model bundle '{path}' has no class list; re-run featx classify to write it again.")
    return Model(path, loaded)
