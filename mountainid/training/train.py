"""Fitting the classification head on photo features.

The head is small (L2-normalised features, dropout, an optional hidden layer, softmax), so a
retrain on cached features takes seconds on a CPU; TensorFlow uses a GPU by itself when one is
present. Classes are balanced with per-class weights, so a mountain with many photos does not
crowd out one with few. Every knob is a :class:`HeadConfig` field and a CLI flag; the defaults
are the values measured best on peaks14 (``benchmarks/train.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from mountainid.logs import event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 0  # 0: multinomial logistic regression; >0: one ReLU layer of this width
    dropout: float = 0.2  # on the input features
    weight_decay: float = 1e-4  # L2 penalty on the weights
    label_smoothing: float = 0.1
    learning_rate: float = 3e-3
    epochs: int = 150
    patience: int = 30  # stop when validation loss has not improved for this many epochs
    batch_size: int = 32
    balance: bool = True  # weight classes inversely to their photo counts
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def class_weights(targets: np.ndarray, classes: int) -> dict[int, float]:
    """Weights that make every class count as much as the average class."""
    counts = np.bincount(targets, minlength=classes).astype(np.float64)
    return {i: float(len(targets) / (classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def build_head(dim: int, classes: int, config: HeadConfig):
    """features (N, dim) -> class probabilities (N, classes)."""
    import keras

    regularizer = keras.regularizers.l2(config.weight_decay)
    inputs = keras.Input((dim,), name="features")
    x = keras.layers.UnitNormalization(name="l2_normalize")(inputs)
    x = keras.layers.Dropout(config.dropout, seed=config.seed)(x)
    if config.hidden:
        x = keras.layers.Dense(config.hidden, activation="relu", kernel_regularizer=regularizer)(x)
        x = keras.layers.Dropout(0.5, seed=config.seed)(x)
    outputs = keras.layers.Dense(classes, activation="softmax", kernel_regularizer=regularizer,
                                 name="mountain")(x)
    return keras.Model(inputs, outputs, name="mountain_head")


def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               classes: int, config: HeadConfig):
    """Fit a head; returns (model with the best-validation-loss weights, history dict)."""
    import keras

    keras.utils.set_random_seed(config.seed)
    model = build_head(x_train.shape[1], classes, config)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    has_val = len(x_val) > 0
    callbacks = [keras.callbacks.EarlyStopping("val_loss", patience=config.patience,
                                               restore_best_weights=True)] if has_val else []
    started = time.perf_counter()
    history = model.fit(
        x_train, keras.utils.to_categorical(y_train, classes), epochs=config.epochs,
        batch_size=config.batch_size, verbose=0, shuffle=True, callbacks=callbacks,
        class_weight=class_weights(y_train, classes) if config.balance else None,
        validation_data=(x_val, keras.utils.to_categorical(y_val, classes)) if has_val else None)
    event(log, "head trained", epochs=len(history.history["loss"]), train=len(x_train), val=len(x_val),
          classes=classes, seconds=round(time.perf_counter() - started, 1))
    return model, {name: [float(v) for v in values] for name, values in history.history.items()}
