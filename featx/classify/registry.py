"""The CLASSIFIERS registry: name -> (estimator factory, parameter grid, search strategy).

Supporting a new classifier is one `ClassifierSpec` entry. Every estimator here
follows scikit-learn's contract, so GridSearchCV, clone and joblib treat them alike:
- `logreg`: StandardScaler + LogisticRegression (lbfgs; multinomial for multiclass);
- `xgboost`: `EarlyStoppingXGB`, an XGBClassifier that stops on an inner stratified split
  (so the large tree caps in the grid cost nothing once the validation loss stops falling);
- `dense`: `DenseHead`, a small Keras head (0 hidden layers = the pooled softmax of
  Paterakis et al.; 256/1024 ReLU units with dropout = their Dense-1024 head).
Multilabel targets ((N, K) 0/1) wrap logreg/xgboost in OneVsRestClassifier (grid keys
prefixed `estimator__`); the dense head uses K sigmoid outputs natively.

TensorFlow and XGBoost are imported lazily, so importing this module stays fast.
"""

from __future__ import annotations

import functools
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from featx.errors import ClassifyError, one_of_message

TASKS = ("binary", "multiclass", "multilabel")
SEARCHES = ("grid", "halving")


# ---------------------------------------------------------------- XGBoost


@functools.lru_cache(maxsize=1)
def xgboost_device() -> str:
    """'cuda' when this xgboost build has CUDA and a GPU answers a one-round probe, else 'cpu'."""
    try:
        import xgboost
    except ImportError:  # pragma: no cover - xgboost is a hard dependency
        return "cpu"
    if not xgboost.build_info().get("USE_CUDA"):
        return "cpu"
    if shutil.which("nvidia-smi") is None and not Path("/proc/driver/nvidia").exists():
        return "cpu"
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            probe = xgboost.DMatrix(np.array([[0.0], [1.0]], dtype=np.float32), label=np.array([0.0, 1.0]))
            booster = xgboost.train({"device": "cuda", "tree_method": "hist", "verbosity": 1}, probe, num_boost_round=1)
        config = booster.save_config()
        if any("GPU" in str(w.message) or "cuda" in str(w.message).lower() for w in caught) or '"cuda' not in config:
            return "cpu"
        return "cuda"
    except Exception:  # noqa: BLE001 - any failure of the probe means: no usable GPU
        return "cpu"


class EarlyStoppingXGB(ClassifierMixin, BaseEstimator):
    """XGBClassifier with early stopping on an inner stratified hold-out of the training rows.

    `n_estimators` is a cap; the fitted booster keeps the trees up to the best validation
    round (`best_iteration_`, `n_estimators_`). `scale_pos_weight="balanced"` is resolved at
    fit time: n_negative / n_positive for a binary task, balanced sample weights for multiclass.
    The inner split is by row (the estimator never sees patient ids); the outer CV stays
    patient-grouped, so only the stopping round, never the reported scores, can be optimistic.
    """

    def __init__(
        self,
        max_depth=4,
        learning_rate=0.1,
        n_estimators=500,
        subsample=0.8,
        colsample_bytree=0.5,
        scale_pos_weight=1.0,
        min_child_weight=1.0,
        reg_lambda=1.0,
        max_bin=32,
        early_stopping_rounds=20,
        validation_fraction=0.15,
        device="cpu",
        n_jobs=1,
        random_state=0,
    ):
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.n_estimators = n_estimators
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.scale_pos_weight = scale_pos_weight
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.device = device
        self.n_jobs = n_jobs
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X, y, sample_weight=None):
        from sklearn.utils.class_weight import compute_sample_weight
        from sklearn.utils.multiclass import check_classification_targets
        from xgboost import XGBClassifier

        X, y = validate_data(self, X, y, dtype=np.float32, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(f"EarlyStoppingXGB needs at least 2 classes in y; got {n_classes} class.")
        weights = None
        if sample_weight is not None:
            weights = _check_sample_weight(sample_weight, X, dtype=np.float64)
            if not (weights > 0).any():
                raise ValueError("Sample weights must contain at least one non-zero weight; all weights are zero.")
        scale_pos_weight = self.scale_pos_weight
        if isinstance(scale_pos_weight, str):
            if scale_pos_weight != "balanced":
                raise ValueError(f"scale_pos_weight must be a number or 'balanced'; got {scale_pos_weight!r}.")
            if n_classes == 2:
                n_positive = max(int(encoded.sum()), 1)
                scale_pos_weight = float(len(encoded) - n_positive) / n_positive
            else:
                balanced = compute_sample_weight("balanced", encoded)
                weights = balanced if weights is None else weights * balanced
                scale_pos_weight = 1.0
        train_rows, valid_rows = self._inner_split(encoded)
        params = dict(
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            n_estimators=self.n_estimators,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            min_child_weight=self.min_child_weight,
            reg_lambda=self.reg_lambda,
            max_bin=self.max_bin,
            tree_method="hist",
            device=self.device,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            verbosity=0,
        )
        if n_classes == 2:
            params.update(objective="binary:logistic", eval_metric="logloss", scale_pos_weight=scale_pos_weight)
        else:
            params.update(objective="multi:softprob", eval_metric="mlogloss", num_class=n_classes)
        fit_kwargs = {}
        if valid_rows is not None and self.early_stopping_rounds:
            params["early_stopping_rounds"] = self.early_stopping_rounds
            fit_kwargs["eval_set"] = [(X[valid_rows], encoded[valid_rows])]
            if weights is not None:
                fit_kwargs["sample_weight_eval_set"] = [weights[valid_rows]]
        else:
            train_rows = np.arange(len(encoded))
        booster = XGBClassifier(**params)
        booster.fit(
            X[train_rows],
            encoded[train_rows],
            sample_weight=None if weights is None else weights[train_rows],
            verbose=False,
            **fit_kwargs,
        )
        self.booster_ = booster
        best = getattr(booster, "best_iteration", None)
        self.best_iteration_ = int(best) if best is not None else int(self.n_estimators) - 1
        self.n_estimators_ = self.best_iteration_ + 1
        self.scale_pos_weight_ = float(scale_pos_weight)
        return self

    def _inner_split(self, encoded: np.ndarray):
        """Stratified inner validation rows, or (all, None) when there are too few rows per class."""
        from sklearn.model_selection import train_test_split

        counts = np.bincount(encoded)
        n_valid = int(round(self.validation_fraction * len(encoded)))
        if not self.validation_fraction or counts.min() < 4 or n_valid < len(counts) * 2:
            return np.arange(len(encoded)), None
        rows = np.arange(len(encoded))
        train_rows, valid_rows = train_test_split(
            rows, test_size=n_valid, stratify=encoded, random_state=self.random_state
        )
        return np.sort(train_rows), np.sort(valid_rows)

    def predict_proba(self, X):
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float32, reset=False, ensure_all_finite="allow-nan")
        proba = self.booster_.predict_proba(X)
        if proba.ndim == 1:
            proba = np.column_stack([1.0 - proba, proba])
        return proba

    def predict(self, X):
        check_is_fitted(self, "booster_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# ---------------------------------------------------------------- Keras dense head


class DenseHead(ClassifierMixin, BaseEstimator):
    """A small Keras classification head on fixed embeddings, as a scikit-learn estimator.

    hidden_units=0: dropout + softmax on the (standardised) embedding, the pooled softmax of
    Paterakis et al.; hidden_units>0: dropout + Dense(hidden_units, ReLU) + dropout + output
    (their Dense-1024 head). Adam, early stopping on an inner stratified validation split
    with the best weights restored. Softmax for binary/multiclass y (1-D), K sigmoid outputs
    for a multilabel (N, K) 0/1 y. Deterministic for a given random_state on CPU.
    """

    def __init__(
        self,
        hidden_units=0,
        dropout=0.2,
        learning_rate=1e-3,
        l2=0.0,
        batch_size=128,
        max_epochs=100,
        patience=8,
        validation_fraction=0.15,
        random_state=0,
    ):
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.l2 = l2
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.non_deterministic = False
        return tags

    # -- fitting

    def fit(self, X, y):
        from sklearn.utils.multiclass import check_classification_targets, type_of_target

        from featx.runtime import import_tensorflow_quietly

        import_tensorflow_quietly()

        X, y = validate_data(self, X, y, dtype=np.float32, multi_output=True, y_numeric=False)
        check_classification_targets(y)
        target_type = type_of_target(y)
        self.multilabel_ = target_type == "multilabel-indicator"
        if self.multilabel_:
            y = np.asarray(y)
            self.classes_ = np.arange(y.shape[1])
            targets = y.astype(np.float32)
            strata = None
        else:
            y = column_or_1d(y, warn=True)
            self.classes_, encoded = np.unique(y, return_inverse=True)
            if len(self.classes_) < 2:
                raise ValueError(f"DenseHead needs at least 2 classes in y; got {len(self.classes_)} class.")
            targets = encoded.astype(np.int32)
            strata = encoded
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0).astype(np.float32)
        Z = (X - self.mean_) / self.scale_
        n_outputs = len(self.classes_)

        import keras

        python_state, numpy_state = random.getstate(), np.random.get_state()
        keras.utils.set_random_seed(int(self.random_state))  # only the TF seed matters; globals restored below
        try:
            model = self._build(keras, Z.shape[1], n_outputs)
            train_rows, valid_rows = self._inner_split(len(Z), strata)
            history = self._train(model, Z, targets, train_rows, valid_rows)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        self.model_ = model
        self.n_epochs_ = len(history)
        self.best_epoch_ = int(np.argmin(history)) + 1 if valid_rows is not None and history else self.n_epochs_
        return self

    def _train(self, model, Z, targets, train_rows, valid_rows) -> list[float]:
        """Adam with mini-batches; early stopping on the validation loss, best weights restored.

        A compiled train step and our own epoch loop instead of keras.Model.fit: fit's per-epoch
        machinery (data adapters, callbacks, a validation pass through evaluate) dominated the
        cost of these small heads, several times over on small inputs.
        """
        import keras
        import tensorflow as tf

        multilabel = self.multilabel_
        loss_fn = keras.losses.BinaryCrossentropy() if multilabel else keras.losses.SparseCategoricalCrossentropy()
        optimizer = keras.optimizers.Adam(learning_rate=float(self.learning_rate))
        optimizer.build(model.trainable_variables)
        data = tf.constant(Z)
        labels = tf.constant(targets)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)], reduce_retracing=True)
        def train_step(rows):
            x, t = tf.gather(data, rows), tf.gather(labels, rows)
            with tf.GradientTape() as tape:
                loss = loss_fn(t, model(x, training=True))
                if model.losses:
                    loss = loss + tf.add_n(model.losses)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)], reduce_retracing=True)
        def validation_loss(rows):
            return loss_fn(tf.gather(labels, rows), model(tf.gather(data, rows), training=False))

        rng = np.random.default_rng(int(self.random_state))
        # at least ~8 steps per epoch, so small training sets are not starved of updates
        batch_size = max(1, min(int(self.batch_size), max(16, len(train_rows) // 8)))
        valid = None if valid_rows is None else tf.constant(valid_rows.astype(np.int32))
        history: list[float] = []
        best_loss, best_weights, waited = np.inf, None, 0
        for _ in range(int(self.max_epochs)):
            order = rng.permutation(train_rows).astype(np.int32)
            epoch_loss = 0.0
            for start in range(0, len(order), batch_size):
                epoch_loss = float(train_step(tf.constant(order[start : start + batch_size])))
            if valid is None:
                history.append(epoch_loss)
                continue
            loss = float(validation_loss(valid))
            history.append(loss)
            if loss < best_loss - 1e-4:
                best_loss, best_weights, waited = loss, model.get_weights(), 0
            else:
                waited += 1
                if waited >= int(self.patience):
                    break
        if best_weights is not None:
            model.set_weights(best_weights)
        return history

    def _build(self, keras, n_features: int, n_outputs: int):
        seed = int(self.random_state)
        regularizer = keras.regularizers.L2(self.l2) if self.l2 else None
        inputs = keras.Input(shape=(n_features,), dtype="float32")
        x = inputs
        if self.dropout:
            x = keras.layers.Dropout(self.dropout, seed=seed)(x)
        if self.hidden_units:
            x = keras.layers.Dense(
                int(self.hidden_units),
                activation="relu",
                kernel_initializer=keras.initializers.HeNormal(seed=seed + 1),
                kernel_regularizer=regularizer,
            )(x)
            if self.dropout:
                x = keras.layers.Dropout(self.dropout, seed=seed + 2)(x)
        activation = "sigmoid" if self.multilabel_ else "softmax"
        outputs = keras.layers.Dense(
            n_outputs,
            activation=activation,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 3),
            kernel_regularizer=regularizer,
        )(x)
        return keras.Model(inputs, outputs)

    def _inner_split(self, n_rows: int, strata):
        from sklearn.model_selection import train_test_split

        n_valid = int(round(self.validation_fraction * n_rows))
        rows = np.arange(n_rows)
        if not self.validation_fraction or n_valid < 2 or n_rows - n_valid < 2:
            return rows, None
        stratify = None
        if strata is not None:
            counts = np.bincount(strata)
            if counts.min() < 2 or n_valid < len(counts) or n_rows - n_valid < len(counts):
                return rows, None
            stratify = strata
        train_rows, valid_rows = train_test_split(
            rows, test_size=n_valid, stratify=stratify, random_state=int(self.random_state)
        )
        return np.sort(train_rows), np.sort(valid_rows)

    # -- prediction

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        Z = (X - self.mean_) / self.scale_
        chunks = [
            np.asarray(self.model_(Z[start : start + 8192], training=False), dtype=np.float64)
            for start in range(0, len(Z), 8192)
        ]
        proba = np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes_)))
        if not self.multilabel_:
            proba = proba / proba.sum(axis=1, keepdims=True)
        return proba

    def predict(self, X):
        proba = self.predict_proba(X)
        if self.multilabel_:
            return (proba >= 0.5).astype(int)
        return self.classes_[np.argmax(proba, axis=1)]

    # -- pickling: the Keras model travels as its JSON config plus weights

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        model = state.pop("model_", None)
        if model is not None:
            state["_keras_model"] = {"config": model.to_json(), "weights": [np.asarray(w) for w in model.get_weights()]}
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved = state.pop("_keras_model", None)
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:  # pragma: no cover
            self.__dict__.update(state)
        if saved is not None:
            import keras

            model = keras.models.model_from_json(saved["config"])
            model.set_weights(saved["weights"])
            self.model_ = model


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class ClassifierSpec:
    name: str
    description: str
    build: Callable[..., tuple]  # (task, n_classes, seed, n_jobs, quick) -> (estimator, param_grid)
    search: str = "grid"  # "grid" | "halving" (successive halving on training rows)
    search_options: dict = field(default_factory=dict)  # extra HalvingGridSearchCV arguments


def _one_vs_rest(estimator, grid: dict, n_jobs: int):
    from sklearn.multiclass import OneVsRestClassifier

    return OneVsRestClassifier(estimator, n_jobs=1), {f"estimator__{key}": values for key, values in grid.items()}


def _build_logreg(task, n_classes, seed=0, n_jobs=1, quick=False):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # lbfgs on standardised float64 features: on 5k x 2048 dense rows it converges in well under
    # a second across the whole C range (measured: <= 41 iterations at C=10 with tol 1e-6).
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(solver="lbfgs", max_iter=1000, tol=1e-5, random_state=seed)),
        ]
    )
    if quick:
        grid = {"clf__C": [0.01], "clf__class_weight": [None]}
    else:
        grid = {"clf__C": [1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 1.0, 10.0], "clf__class_weight": [None, "balanced"]}
    if task == "multilabel":
        return _one_vs_rest(model, grid, n_jobs)
    return model, grid


def _build_xgboost(task, n_classes, seed=0, n_jobs=1, quick=False):
    device = xgboost_device()
    model = EarlyStoppingXGB(device=device, n_jobs=max(1, n_jobs), random_state=seed)
    if quick:
        grid = {"max_depth": [3], "learning_rate": [0.3], "n_estimators": [50]}
    else:
        # n_estimators is a cap: early stopping picks the tree count (<= 1000) on the inner split.
        grid = {
            "max_depth": [3, 6],
            "learning_rate": [0.1, 0.3],
            "n_estimators": [1000],
            "subsample": [0.8],
            "colsample_bytree": [0.2, 0.5],
            "scale_pos_weight": [1.0, "balanced"],
        }
    if task == "multilabel":
        return _one_vs_rest(model, grid, n_jobs)
    return model, grid


def _build_dense(task, n_classes, seed=0, n_jobs=1, quick=False):
    model = DenseHead(random_state=seed)
    if quick:
        grid = {"hidden_units": [0], "dropout": [0.2], "learning_rate": [3e-3]}
    else:
        grid = {"hidden_units": [0, 256, 1024], "dropout": [0.2, 0.5], "learning_rate": [1e-3, 3e-4]}
    return model, grid


CLASSIFIERS: dict[str, ClassifierSpec] = {
    spec.name: spec
    for spec in (
        ClassifierSpec(
            "logreg",
            "StandardScaler + logistic regression (lbfgs), grid over C and class_weight",
            _build_logreg,
            search="grid",
        ),
        ClassifierSpec(
            "xgboost",
            "XGBoost (hist; CUDA when present) with early stopping, grid over depth, learning rate, trees, "
            "column subsampling and positive-class weight",
            _build_xgboost,
            search="halving",
            # 16 candidates: 16 -> 4 -> 1 keeps one full-data round of 5 fits instead of two (factor 3)
            search_options={"factor": 4},
        ),
        ClassifierSpec(
            "dense",
            "Keras dense head: pooled softmax (0 hidden) or 256/1024 ReLU units with dropout, Adam, early stopping",
            _build_dense,
            search="halving",
        ),
    )
}


def get_classifier(name: str) -> ClassifierSpec:
    """The registry entry for `name`; ClassifyError listing the names (with a closest match) otherwise."""
    try:
        return CLASSIFIERS[name]
    except (KeyError, TypeError):
        raise ClassifyError(one_of_message("classifier", name, list(CLASSIFIERS))) from None


def build_classifier(name, task, n_classes, seed=0, n_jobs=1, quick=False):
    """(estimator, param_grid) for classifier `name` on a task; the grid keys match the estimator."""
    spec = get_classifier(name)
    if task not in TASKS:
        raise ClassifyError(one_of_message("task", task, TASKS))
    return spec.build(task, int(n_classes), seed=seed, n_jobs=n_jobs, quick=quick)


def grid_size(grid: dict) -> int:
    """Number of candidates in a parameter grid."""
    size = 1
    for values in grid.values():
        size *= len(values)
    return size


# Successive halving's first round fits on about n_rows / factor**(rounds-1) rows per fold and
# scores on a subsample of the fold's held-out rows too; below this many rows that ranking is noise.
HALVING_MIN_ROWS = 2000


def make_search(spec_name, estimator, grid, cv_splits, scoring, n_jobs=1, seed=0):
    """The CV search `featx classify` runs for this classifier: GridSearchCV or successive halving.

    cv_splits: the list of (train_rows, test_rows) from evaluate.grouped_splits (patient-grouped);
    scoring: a scorer (evaluate.auc_scorer(task)). The returned object is unfitted; `fit(X, y)`
    refits the best candidate on all rows. Halving's early rounds score candidates on random
    subsets of both sides of each fold (scikit-learn subsamples train and test rows alike); the
    last round uses the full folds, and subsets never mix patients across a fold. Below
    HALVING_MIN_ROWS training rows those subsets are too small to rank candidates, so small
    datasets, like small grids (quick runs), get the exhaustive grid.
    """
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    spec = get_classifier(spec_name)
    cv_splits = list(cv_splits)
    if n_jobs != 1:
        # parallel fits: one thread each, or 2 processes x 2 threads fight over 2 cores
        estimator = clone(estimator).set_params(
            **{
                key: 1
                for key, value in estimator.get_params().items()
                if (key == "n_jobs" or key.endswith("__n_jobs")) and value not in (None, 1)
            }
        )
    common = dict(scoring=scoring, cv=cv_splits, n_jobs=n_jobs, refit=True)
    n_rows = sum(len(test_rows) for _, test_rows in cv_splits)
    if search_strategy(spec_name, grid, n_rows) == "halving":
        # early rounds fit on random subsets of each fold's training rows; a subset that lost a
        # class cannot be fitted and ranks last instead of aborting (all fits failing still raises)
        common["error_score"] = np.nan
        from sklearn.experimental import enable_halving_search_cv  # noqa: F401
        from sklearn.model_selection import HalvingGridSearchCV

        options = {"factor": 3, "min_resources": "exhaust", "aggressive_elimination": False}
        options.update(spec.search_options)
        return HalvingGridSearchCV(estimator, grid, resource="n_samples", random_state=seed, **options, **common)
    return GridSearchCV(estimator, grid, error_score="raise", **common)


def search_strategy(spec_name, grid, n_rows=None) -> str:
    """The strategy make_search will use for this grid and row count: 'grid' or 'halving'."""
    spec = get_classifier(spec_name)
    big_enough = n_rows is None or n_rows >= HALVING_MIN_ROWS
    return "halving" if spec.search == "halving" and grid_size(grid) >= 4 and big_enough else "grid"
