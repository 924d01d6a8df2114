"""The scikit-learn estimators featx adds to its classifier registry.

- `EarlyStoppingXGB`: an XGBClassifier that stops on an inner stratified split, so the
  large tree caps in the grid cost nothing once the validation loss stops falling;
- `DenseHead`: a small Keras head (0 hidden layers = the pooled softmax of Paterakis
  et al.; 256/1024 ReLU units with dropout = their Dense-1024 head).

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

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from featx.runtime import interrupt_pending, interrupts_deferred

# ---------------------------------------------------------------- XGBoost


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
        """Fit on (X, y), stopping on the inner stratified hold-out; returns self."""
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
        booster = XGBClassifier(**params, callbacks=[_stop_on_interrupt()])
        # A KeyboardInterrupt raised inside XGBoost's ctypes data-iterator callback corrupts the heap: Ctrl-C is
        # deferred, stops the boosting at the next round, and is raised when fit returns.
        with interrupts_deferred():
            booster.fit(
                X[train_rows],
                encoded[train_rows],
                sample_weight=None if weights is None else weights[train_rows],
                verbose=False,
                **fit_kwargs,
            )
        booster.set_params(callbacks=None)  # bundles carry no featx callback
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
        """(N, n_classes) class probabilities in classes_ order."""
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float32, reset=False, ensure_all_finite="allow-nan")
        proba = self.booster_.predict_proba(X)
        if proba.ndim == 1:
            proba = np.column_stack([1.0 - proba, proba])
        return proba

    def predict(self, X):
        """The most probable class per row."""
        check_is_fitted(self, "booster_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


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
        """Standardise X and train the head (early stopping on an inner split where rows allow); returns self."""
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
            with interrupts_deferred():  # Ctrl-C ends the epoch loop at a step boundary, then is raised
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
                if interrupt_pending():
                    return history
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
        """(N, n_classes) softmax probabilities, or (N, K) independent sigmoids for multilabel."""
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
