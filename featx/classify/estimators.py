"""The scikit-learn estimators featx adds to its classifier registry.

- `EarlyStoppingXGB`: XGBoost (native API) that stops on an inner stratified split, so the
  large tree caps in the grid cost nothing once the validation loss stops falling;
- `DenseHead`: a small Keras head (0 hidden layers = the pooled softmax of Paterakis
  et al.; 256/1024 ReLU units with dropout = their Dense-1024 head).

Each also has `candidate_probabilities(candidates, X_fit, y_fit, X_eval)`, the search's
fast path: a fold's grid points fitted together (one binned matrix; heads side by side),
each with the answer its own `fit` gives.

Both follow scikit-learn's estimator contract (`__init__` stores arguments only, fitted
state ends in `_`, `fit` returns self), so GridSearchCV, clone and joblib treat them like
any other estimator. XGBoost and TensorFlow are imported inside `fit`, so importing this
module stays fast. Joblib bundles pickle an estimator by class path: registry.py imports
both classes, so bundles written when they lived there still load. Both fits run with
Ctrl-C deferred (featx.runtime.interrupts_deferred) and stop early at their next round
or epoch once it arrives, so a Ctrl-C never lands inside XGBoost's native callbacks.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from featx.runtime import interrupt_pending, interrupts_deferred

# ---------------------------------------------------------------- scaling


class RowBlockScaler(StandardScaler):
    """A StandardScaler whose `fit` reads a matrix of more than `BLOCK_BYTES` in row blocks (through `partial_fit`).

    scikit-learn's `fit` makes float64 temporaries the size of the whole matrix (about 2.3x a float32 X);
    here they are one block's (a constant). A matrix of at most BLOCK_BYTES (every Kermany-sized fit:
    5,216 x 2,048 float32 is 43 MB) is fitted by StandardScaler's own `fit`, so its mean and scale are
    bit-identical; above, the incremental mean/variance update agrees to float64 rounding.
    Parameters and transform are StandardScaler's.
    """

    BLOCK_BYTES = 64 * 1024**2

    def fit(self, X, y=None, sample_weight=None):
        if sample_weight is not None or not isinstance(X, np.ndarray) or X.ndim != 2 or X.nbytes <= self.BLOCK_BYTES:
            return super().fit(X, y, sample_weight)
        block = max(1, self.BLOCK_BYTES // max(1, X.itemsize * X.shape[1]))
        self._reset()
        for start in range(0, len(X), block):
            self.partial_fit(X[start : start + block])
        return self


# ---------------------------------------------------------------- XGBoost


class EarlyStoppingXGB(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees (XGBoost, hist) with early stopping on an inner stratified hold-out of the training rows.

    Trained through XGBoost's native API (`xgboost.train` on a binned QuantileDMatrix), so a
    grid search can bin a fold once for all its grid points (`candidate_probabilities`).
    `n_estimators` is a cap; the fitted booster (`booster_`, an `xgboost.Booster`) keeps the
    trees up to the best validation round (`best_iteration_`, `n_estimators_`). `scale_pos_weight="balanced"` is resolved at
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
        """Fit on (X, y), stopping on the inner stratified hold-out; returns self."""
        X, encoded, weights, scale_pos_weight = self._prepare(X, y, sample_weight)
        return self._train(self._matrices(X, encoded, weights), scale_pos_weight)

    def candidate_probabilities(self, candidates, X_fit, y_fit, X_eval) -> list[np.ndarray]:
        """predict_proba of X_eval under each candidate (parameter dict) fitted on (X_fit, y_fit).

        The search's fast path: candidates that bin and split the rows alike (same max_bin,
        inner split, device, sample weights) share one binned QuantileDMatrix instead of
        sketching the quantiles again for every grid point. Each candidate's booster is the
        one `clone(self).set_params(**params).fit(X_fit, y_fit)` would train.
        """
        shared: dict[tuple, dict] = {}
        probabilities = []
        for params in candidates:
            model = clone(self).set_params(**params)
            X, encoded, weights, scale_pos_weight = model._prepare(X_fit, y_fit, None)
            key = (
                model.max_bin,
                model.validation_fraction,
                model.early_stopping_rounds,
                model.random_state,
                model.device,
                weights is not None,  # only multiclass "balanced" makes weights here
            )
            if key not in shared:
                shared[key] = model._matrices(X, encoded, weights)
            probabilities.append(model._train(shared[key], scale_pos_weight).predict_proba(X_eval))
        return probabilities

    def _prepare(self, X, y, sample_weight):
        """Validated X, encoded labels, sample weights and the resolved scale_pos_weight; sets classes_."""
        from sklearn.utils.class_weight import compute_sample_weight
        from sklearn.utils.multiclass import check_classification_targets

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
        return X, encoded, weights, float(scale_pos_weight)

    def _matrices(self, X, encoded, weights) -> dict:
        """The binned training matrix and the inner validation rows (raw values, as new rows are scored) for xgboost.train."""
        import xgboost

        train_rows, valid_rows = self._inner_split(encoded)
        if valid_rows is None or not self.early_stopping_rounds:
            train_rows, valid_rows = np.arange(len(encoded)), None

        def rows(index):
            return X[index], encoded[index], None if weights is None else weights[index]

        common = dict(max_bin=int(self.max_bin), nthread=int(self.n_jobs))
        with interrupts_deferred():  # QuantileDMatrix reads numpy through XGBoost's ctypes data iterator
            if len(train_rows) * X.shape[1] * X.itemsize > CHUNKED_BINNING_BYTES:
                # no float32 copy of the training rows: XGBoost sketches and bins them a chunk at a time
                chunks = _row_chunks(X, encoded, weights, train_rows, CHUNKED_BINNING_BYTES // 4)
                train = xgboost.QuantileDMatrix(chunks, **common)
            else:
                X_train, y_train, w_train = rows(train_rows)
                train = xgboost.QuantileDMatrix(X_train, y_train, weight=w_train, **common)
            valid = None
            if valid_rows is not None:
                # a plain DMatrix: the trees score its raw values as predict_proba scores new rows (inplace_predict),
                # and evaluating it every round costs ~40% less than a QuantileDMatrix binned like `train`
                X_valid, y_valid, w_valid = rows(valid_rows)
                valid = xgboost.DMatrix(X_valid, y_valid, weight=w_valid, nthread=int(self.n_jobs))
        return {"train": train, "valid": valid}

    def _train(self, matrices: dict, scale_pos_weight: float):
        """Boost on the shared matrices, stopping on the validation loss; keeps the trees up to the best round."""
        import xgboost

        n_classes = len(self.classes_)
        params = {
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "lambda": self.reg_lambda,
            "max_bin": int(self.max_bin),
            "tree_method": "hist",
            "device": self.device,
            "nthread": int(self.n_jobs),
            "seed": int(self.random_state),
            "verbosity": 0,
        }
        if n_classes == 2:
            params.update(objective="binary:logistic", eval_metric="logloss", scale_pos_weight=scale_pos_weight)
        else:
            params.update(objective="multi:softprob", eval_metric="mlogloss", num_class=n_classes)
        valid = matrices["valid"]
        # A KeyboardInterrupt raised inside XGBoost's native callbacks corrupts the heap: Ctrl-C is deferred,
        # stops the boosting at the next round, and is raised when training returns.
        with interrupts_deferred():
            booster = xgboost.train(
                params,
                matrices["train"],
                num_boost_round=int(self.n_estimators),
                evals=[(valid, "validation")] if valid is not None else (),
                early_stopping_rounds=int(self.early_stopping_rounds) if valid is not None else None,
                verbose_eval=False,
                callbacks=[_stop_on_interrupt()],
            )
        best = getattr(booster, "best_iteration", None) if valid is not None else None
        self.best_iteration_ = int(best) if best is not None else int(self.n_estimators) - 1
        self.n_estimators_ = self.best_iteration_ + 1
        self.booster_ = booster[: self.n_estimators_]  # the trees up to the best round, the rest dropped
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
        """(N, n_classes) class probabilities in classes_ order."""
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float32, reset=False, ensure_all_finite="allow-nan")
        if hasattr(self.booster_, "predict_proba"):  # bundles of earlier featx builds hold an XGBClassifier
            proba = self.booster_.predict_proba(X)
        else:
            proba = self.booster_.inplace_predict(X)  # P(positive) (N,) or softprob (N, K)
        proba = np.asarray(proba, dtype=np.float64)
        if proba.ndim == 1:
            proba = np.column_stack([1.0 - proba, proba])
        return proba

    def predict(self, X):
        """The most probable class per row."""
        check_is_fitted(self, "booster_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# Training rows of more than this many bytes are binned from row chunks (_row_chunks), not from one copy.
CHUNKED_BINNING_BYTES = 256 * 1024**2


def _row_chunks(X, encoded, weights, rows, chunk_bytes: int):
    """An xgboost.DataIter over X[rows] in chunks of about `chunk_bytes`: a QuantileDMatrix built from it
    holds the binned rows (1 byte a value at max_bin <= 256) without a float32 copy of them all."""
    import xgboost

    class RowChunks(xgboost.DataIter):
        def __init__(self):
            self.step = max(1, int(chunk_bytes) // max(1, X.shape[1] * X.itemsize))
            self.start = 0
            super().__init__()

        def next(self, input_data) -> bool:
            if self.start >= len(rows):
                return False
            index = rows[self.start : self.start + self.step]
            self.start += self.step
            input_data(data=X[index], label=encoded[index], weight=None if weights is None else weights[index])
            return True

        def reset(self) -> None:
            self.start = 0

    return RowChunks()


def _stop_on_interrupt():
    """An XGBoost training callback that ends boosting once Ctrl-C arrived (see featx.runtime)."""
    from xgboost.callback import TrainingCallback

    class StopOnInterrupt(TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            return interrupt_pending()

    return StopOnInterrupt()


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
        patience=4,
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
        """Standardise X and train the head (early stopping on an inner split where rows allow); returns self."""
        data = self._prepare(X, y)
        trainer, slots = _trainer([self], data)
        with interrupts_deferred():  # Ctrl-C ends the epoch loop after an epoch, then is raised
            epochs = trainer.train(self, data, slots)
        self.model_ = trainer.standalone(slots[0])
        self.n_epochs_, self.best_epoch_ = epochs[0]
        self.batch_size_ = trainer.batch_rows  # batch_size, or what epoch_batch_size made of it for these rows
        return self

    def candidate_probabilities(self, candidates, X_fit, y_fit, X_eval) -> list[np.ndarray]:
        """predict_proba of X_eval under each candidate (parameter dict) fitted on (X_fit, y_fit).

        The search's fast path: the heads of candidates that share a training schedule (batch
        size, epochs, patience, inner split, seed) are trained side by side in one compiled
        epoch on one standardised matrix, each with its own loss, Adam and early stopping
        (_HeadsTrainer). Each head starts from the weights, sees the batches and draws the
        dropout masks its own `fit` would, so its predictions are those of
        `clone(self).set_params(**params).fit(X_fit, y_fit)`.
        """
        models = [clone(self).set_params(**params) for params in candidates]
        groups: dict[tuple, list[int]] = {}
        for index, model in enumerate(models):
            groups.setdefault(tuple(model.get_params()[key] for key in _SCHEDULE_PARAMS), []).append(index)
        probabilities: list = [None] * len(models)
        for members in groups.values():
            group = [models[i] for i in members]
            data = group[0]._prepare(X_fit, y_fit)
            trainer, slots = _trainer(group, data)
            with interrupts_deferred():  # Ctrl-C ends the epoch loop after an epoch, then is raised
                trainer.train(group[0], data, slots)
            X_eval = validate_data(group[0], X_eval, dtype=np.float32, reset=False)
            for i, proba in zip(members, trainer.predict_proba(group[0], X_eval, slots)):
                probabilities[i] = proba
        return probabilities

    def _prepare(self, X, y) -> dict:
        """Validated training data (standardised where used); sets classes_, multilabel_, mean_, scale_, n_features_in_."""
        from sklearn.utils.multiclass import check_classification_targets, type_of_target

        X, y = validate_data(self, X, y, dtype=np.float32, multi_output=True, y_numeric=False)
        check_classification_targets(y)
        self.multilabel_ = type_of_target(y) == "multilabel-indicator"
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
        # the rows are standardised a batch at a time where they are used (_standardised, the trainer's graph):
        # a standardised copy of X would double the memory a fit on a large matrix needs
        return {"X": X, "targets": targets, "strata": strata}

    def _head(self, keras, inputs, n_outputs: int):
        """This head's layers on `inputs`: its output tensor and its layers (for its variables)."""
        seed = int(self.random_state)
        regularizer = keras.regularizers.L2(self.l2) if self.l2 else None
        layers = []
        if self.dropout:
            layers.append(keras.layers.Dropout(self.dropout, seed=seed))
        if self.hidden_units:
            layers.append(
                keras.layers.Dense(
                    int(self.hidden_units),
                    activation="relu",
                    kernel_initializer=keras.initializers.HeNormal(seed=seed + 1),
                    kernel_regularizer=regularizer,
                )
            )
            if self.dropout:
                layers.append(keras.layers.Dropout(self.dropout, seed=seed + 2))
        layers.append(
            keras.layers.Dense(
                n_outputs,
                activation="sigmoid" if self.multilabel_ else "softmax",
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 3),
                kernel_regularizer=regularizer,
            )
        )
        x = inputs
        for layer in layers:
            x = layer(x)
        return x, layers

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
        """(N, n_classes) softmax probabilities, or (N, K) independent sigmoids for multilabel."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        chunks = [
            np.asarray(self.model_(self._standardised(X[start : start + 8192]), training=False), dtype=np.float64)
            for start in range(0, len(X), 8192)
        ]
        proba = np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes_)))
        if not self.multilabel_:
            proba = proba / proba.sum(axis=1, keepdims=True)
        return proba

    def _standardised(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) / self.scale_

    def predict(self, X):
        """The most probable class per row, or (N, K) 0/1 at 0.5 for multilabel."""
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
            from featx.runtime import import_tensorflow_quietly

            import_tensorflow_quietly()  # unpickling a bundle (featx predict) must not print TensorFlow's start-up noise
            import keras

            model = keras.models.model_from_json(saved["config"])
            model.set_weights(saved["weights"])
            self.model_ = model


def epoch_batch_size(batch_size: int, n_train: int) -> int:
    """The batch a DenseHead trains with on `n_train` rows: `batch_size`, but at least ~8 steps per epoch on
    small sets, so they are not starved of updates.

    Large sets keep `batch_size`: growing the batch with the rows (at most 256 steps an epoch) was measured
    slower on CPU — an 80,000-row refit of the linear head took 29 epochs at 266 rows a batch against 13 at
    128 (18.8 s against 13.1 s, docs/scale.md): each step's fixed costs are small next to its rows here.
    """
    return max(1, min(int(batch_size), max(16, n_train // 8)))


# What a DenseHead's training schedule is made of: heads agreeing on these can be trained side by side.
_SCHEDULE_PARAMS = ("batch_size", "max_epochs", "patience", "validation_fraction", "random_state")
# Compiled trainers kept for reuse (each holds its heads' models, Adams and traced functions)
_TRAINERS: OrderedDict[tuple, _HeadsTrainer] = OrderedDict()
_MAX_TRAINERS = 4  # a 12-head trainer on 2,048-wide embeddings holds ~200 MB (weights, Adam, initial values)


def _trainer(heads: list[DenseHead], data: dict) -> tuple[_HeadsTrainer, list[int]]:
    """A compiled trainer holding these heads on data of this shape, and the slot of each head in it.

    Building and tracing a trainer costs more than training its heads on a small fold (~3 s for
    12 heads), so trainers are kept: the search trains the same heads on every fold, and its later
    rounds, the refit and the audits train subsets of its first round's heads, which the first
    round's trainer hosts (its other heads sit idle, skipped inside the step). A head trained in
    a slot starts from the weights, Adam state and dropout seeds a fresh build gives it, whatever
    the other slots hold, so reuse changes no result.
    """
    first = heads[0]
    wanted = [_head_config(h) for h in heads]
    shape = (int(first.random_state), data["X"].shape[1], len(first.classes_), bool(first.multilabel_))
    found = None
    for key in _TRAINERS:  # the smallest kept trainer that hosts every wanted head
        slots = _slots(key[0], wanted) if key[1:] == shape else None
        if slots is not None and (found is None or len(key[0]) < len(found[0][0])):
            found = (key, slots)
    if found is None:
        key, slots = (tuple(wanted), *shape), list(range(len(heads)))
        trainer = _HeadsTrainer(heads, data["X"].shape[1], len(first.classes_), bool(first.multilabel_))
    else:
        key, slots = found
        trainer = _TRAINERS.pop(key)
    _TRAINERS[key] = trainer
    while len(_TRAINERS) > _MAX_TRAINERS:
        _TRAINERS.popitem(last=False)
    return trainer, slots


def _head_config(head: DenseHead) -> tuple:
    """What makes two heads' layers and Adam the same (with the trainer's seed and shapes)."""
    return (int(head.hidden_units), float(head.dropout), float(head.learning_rate), float(head.l2))


def _slots(hosted: tuple, wanted: list[tuple]) -> list[int] | None:
    """A distinct slot of `hosted` for each wanted head config, or None when one has none."""
    free = list(range(len(hosted)))
    slots = []
    for config in wanted:
        slot = next((i for i in free if hosted[i] == config), None)
        if slot is None:
            return None
        free.remove(slot)
        slots.append(slot)
    return slots


class _FusedAdam:
    """Adam for one head as one fused kernel per variable (TensorFlow's ResourceApplyAdam).

    The same update as keras.optimizers.Adam (defaults beta_1 0.9, beta_2 0.999, epsilon 1e-7:
    m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2), w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)),
    but Keras's version is ~10 separate element-wise ops per variable per step: on these small heads
    their dispatch and memory passes cost a third of an epoch (measured: a 12-head epoch on 250 rows
    232 -> 141 ms, a 2 x Dense(1024) epoch on 3,546 rows 395 -> 304 ms).
    """

    BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7

    def __init__(self, tf, variables, learning_rate: float):
        self.tf = tf
        self.variables = list(variables)
        self.moments = [
            (tf.Variable(tf.zeros_like(v), trainable=False), tf.Variable(tf.zeros_like(v), trainable=False))
            for v in self.variables
        ]
        self.steps = tf.Variable(0.0, trainable=False)
        self.learning_rate = learning_rate

    def apply(self, gradients) -> None:
        tf = self.tf
        self.steps.assign_add(1.0)
        beta_1_power, beta_2_power = tf.pow(self.BETA_1, self.steps), tf.pow(self.BETA_2, self.steps)
        for variable, gradient, (m, v) in zip(self.variables, gradients, self.moments):
            tf.raw_ops.ResourceApplyAdam(
                var=variable.value.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=beta_1_power,
                beta2_power=beta_2_power,
                lr=tf.constant(self.learning_rate, tf.float32),
                beta1=tf.constant(self.BETA_1, tf.float32),
                beta2=tf.constant(self.BETA_2, tf.float32),
                epsilon=tf.constant(self.EPSILON, tf.float32),
                grad=gradient,
            )

    def reset(self) -> None:
        self.steps.assign(0.0)
        for m, v in self.moments:
            m.assign(self.tf.zeros_like(m))
            v.assign(self.tf.zeros_like(v))


class _HeadsTrainer:
    """DenseHeads sharing one training schedule, trained side by side by one compiled epoch function.

    Each head is its own Keras model on a shared input, with its own layers (seeded as in its
    own `fit`), loss, Adam, early stopping and best weights. One epoch call runs every batch
    (a graph loop) and updates every head still training on the same batch; a head that has
    stopped is skipped inside the step (`tf.cond`), so it costs nothing more. Each head
    therefore starts from the weights, sees the batches and draws the dropout masks its own
    `fit` would. The data are arguments of the compiled functions, so one trace serves every
    fold; `reset` puts weights, dropout seeds and Adam back to their initial values first.
    """

    def __init__(self, heads: list[DenseHead], n_features: int, n_outputs: int, multilabel: bool):
        from featx.runtime import import_tensorflow_quietly

        tf = import_tensorflow_quietly()
        import keras

        first = heads[0]
        python_state, numpy_state = random.getstate(), np.random.get_state()
        keras.utils.set_random_seed(int(first.random_state))  # only the TF seed matters; globals restored below
        try:
            self.models = []
            for head in heads:
                head.multilabel_ = multilabel
                inputs = keras.Input(shape=(n_features,), dtype="float32")
                output, _ = head._head(keras, inputs, n_outputs)
                self.models.append(keras.Model(inputs, output))
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        self.adams = [
            _FusedAdam(tf, model.trainable_variables, float(head.learning_rate))
            for head, model in zip(heads, self.models)
        ]
        self.initial = [[np.array(v.numpy()) for v in model.variables] for model in self.models]
        self.training = tf.Variable([True] * len(heads), trainable=False)
        self.batch_rows = 0  # the batch of the last train call
        self.multilabel = multilabel
        self._compile(tf, keras, n_features, multilabel)

    def _compile(self, tf, keras, n_features: int, multilabel: bool) -> None:
        loss_fn = keras.losses.BinaryCrossentropy() if multilabel else keras.losses.SparseCategoricalCrossentropy()
        models, adams, training = self.models, self.adams, self.training
        label_spec = tf.TensorSpec([None, None], tf.float32) if multilabel else tf.TensorSpec([None], tf.int32)
        data_spec = tf.TensorSpec([None, n_features], tf.float32)
        rows_spec = tf.TensorSpec([None], tf.int32)

        def head_step(model, adam, x, t):
            def step():
                with tf.GradientTape() as tape:
                    loss = loss_fn(t, model(x, training=True))
                    if model.losses:
                        loss = loss + tf.add_n(model.losses)
                adam.apply(tape.gradient(loss, model.trainable_variables))
                return tf.cast(loss, tf.float32)

            return step

        column_spec = tf.TensorSpec([n_features], tf.float32)

        def standardised_rows(data, mean, scale, rows):
            # as DenseHead._standardised: the same float32 (x - mean) / scale, a batch at a time
            return (tf.gather(data, rows) - mean) / scale

        @tf.function(
            input_signature=[data_spec, column_spec, column_spec, label_spec, rows_spec, tf.TensorSpec([], tf.int32)]
        )
        def train_epoch(data, mean, scale, labels, order, batch_size):
            # the whole epoch in one call (a graph loop over its batches): Python's per-step call overhead
            # cost more than these small heads' arithmetic
            losses = tf.zeros([len(models)], tf.float32)
            for start in tf.range(0, tf.shape(order)[0], batch_size):
                rows = order[start : start + batch_size]
                x, t = standardised_rows(data, mean, scale, rows), tf.gather(labels, rows)
                losses = tf.stack(
                    [
                        tf.cond(training[k], head_step(models[k], adams[k], x, t), lambda: tf.constant(0.0))
                        for k in range(len(models))
                    ]
                )
            return losses

        def head_validation(model, x, t):
            return lambda: tf.cast(loss_fn(t, model(x, training=False)), tf.float32)

        @tf.function(input_signature=[data_spec, column_spec, column_spec, label_spec, rows_spec])
        def validation_losses(data, mean, scale, labels, rows):
            x, t = standardised_rows(data, mean, scale, rows), tf.gather(labels, rows)
            return tf.stack(
                [
                    tf.cond(training[k], head_validation(models[k], x, t), lambda: tf.constant(0.0))
                    for k in range(len(models))
                ]
            )

        self.train_epoch, self.validation_losses = train_epoch, validation_losses

    def reset(self, slots: list[int]) -> None:
        """The heads in `slots` back to the state a fresh build has (initial weights and dropout seed
        states, zeroed Adam) and training; the other heads idle."""
        for k in slots:
            for variable, value in zip(self.models[k].variables, self.initial[k]):
                variable.assign(value)
            self.adams[k].reset()
        self.training.assign([k in slots for k in range(len(self.models))])

    def train(self, first: DenseHead, data: dict, slots: list[int]) -> list[tuple[int, int]]:
        """Adam with mini-batches; early stopping per head on its validation loss, best weights restored.

        Trains the heads in `slots` (the others idle). A compiled epoch and our own loop instead of
        keras.Model.fit: fit's per-epoch machinery (data adapters, callbacks, a validation pass
        through evaluate) dominated the cost of these small heads. Returns (epochs run, best epoch)
        per head of `slots`.
        """
        import tensorflow as tf

        self.reset(slots)
        X, targets = data["X"], data["targets"]
        train_rows, valid_rows = first._inner_split(len(X), data["strata"])
        n_heads = len(self.models)
        rng = np.random.default_rng(int(first.random_state))
        self.batch_rows = epoch_batch_size(int(first.batch_size), len(train_rows))
        batch_size = tf.constant(self.batch_rows, tf.int32)
        features = tf.constant(X)
        mean, scale = tf.constant(first.mean_), tf.constant(first.scale_)
        labels = tf.constant(targets.astype(np.float32) if self.multilabel else targets.astype(np.int32))
        valid = None if valid_rows is None else tf.constant(valid_rows.astype(np.int32))
        history: list[list[float]] = [[] for _ in range(n_heads)]
        best_loss, best_weights = [np.inf] * n_heads, [None] * n_heads
        waited, active = [0] * n_heads, [k in slots for k in range(n_heads)]
        with _quiet_retracing():
            for _ in range(int(first.max_epochs)):
                order = tf.constant(rng.permutation(train_rows).astype(np.int32))
                losses = self.train_epoch(features, mean, scale, labels, order, batch_size)
                if interrupt_pending():
                    break
                if valid is None:
                    for k in slots:
                        history[k].append(float(np.asarray(losses)[k]))
                    continue
                epoch_losses = np.asarray(self.validation_losses(features, mean, scale, labels, valid))
                for k in range(n_heads):
                    if not active[k]:
                        continue
                    loss = float(epoch_losses[k])
                    history[k].append(loss)
                    if loss < best_loss[k] - 1e-4:
                        best_loss[k], best_weights[k], waited[k] = loss, self.models[k].get_weights(), 0
                    else:
                        waited[k] += 1
                        active[k] = waited[k] < int(first.patience)
                if not any(active):
                    break
                self.training.assign(active)
        for model, weights in zip(self.models, best_weights):
            if weights is not None:
                model.set_weights(weights)
        return [
            (len(h), int(np.argmin(h)) + 1 if valid_rows is not None and h else len(h))
            for h in (history[k] for k in slots)
        ]

    def standalone(self, k: int):
        """A copy of head k's model that later uses of this trainer do not touch (a fitted DenseHead's model_)."""
        import keras

        model = keras.models.clone_model(self.models[k])
        model.set_weights(self.models[k].get_weights())
        return model

    def predict_proba(self, head: DenseHead, X: np.ndarray, slots: list[int]) -> list[np.ndarray]:
        """The probabilities of rows X (standardised as `head`'s) under the heads in `slots`, in that order
        (as DenseHead's predict_proba)."""
        probabilities = []
        for model in (self.models[k] for k in slots):
            chunks = [
                np.asarray(model(head._standardised(X[start : start + 8192]), training=False), dtype=np.float64)
                for start in range(0, len(X), 8192)
            ]
            proba = np.concatenate(chunks) if chunks else np.zeros((0, model.output_shape[-1]))
            if not head.multilabel_:
                proba = proba / proba.sum(axis=1, keepdims=True)
            probabilities.append(proba)
        return probabilities


@contextmanager
def _quiet_retracing():
    """TensorFlow warns when tf.functions are traced often; a new trainer's first calls are expected traces."""
    import logging

    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
