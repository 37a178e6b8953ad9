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
from mountainid.training.features import FeatureSpec, mobilenet

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
    augment_views: int = 0  # train on this many augmented views per photo instead of the photo itself
    balance: bool = True  # weight classes inversely to their photo counts
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def class_weights(targets: np.ndarray, classes: int) -> dict[int, float]:
    """Weights that make every class count as much as the average class."""
    counts = np.bincount(targets, minlength=classes).astype(np.float64)
    return {i: float(len(targets) / (classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def build_head(dim: int, classes: int, config: HeadConfig, spec: FeatureSpec, weights: str):
    """features (N, dim) -> class probabilities (N, classes).

    For pooled embeddings: L2 normalisation, dropout, softmax (plus an optional hidden layer).
    For an activation map (``spec.cut``): the rest of MobileNetV2 after the cut, initialised with
    the shared weights and trained, then global pooling, dropout, softmax. Its batch
    normalisation layers stay frozen in inference mode: the shared weights have them folded in
    (identity statistics), and batch statistics of a few photos would wreck the features.
    """
    import keras

    regularizer = keras.regularizers.l2(config.weight_decay)
    inputs = keras.Input((dim,), name="features")
    if spec.cut:
        x = keras.layers.GlobalAveragePooling2D()(_top_blocks(inputs, spec, weights))
    else:
        x = keras.layers.UnitNormalization(name="l2_normalize")(inputs)
    x = keras.layers.Dropout(config.dropout, seed=config.seed)(x)
    if config.hidden:
        x = keras.layers.Dense(config.hidden, activation="relu", kernel_regularizer=regularizer)(x)
        x = keras.layers.Dropout(0.5, seed=config.seed)(x)
    outputs = keras.layers.Dense(classes, activation="softmax", kernel_regularizer=regularizer,
                                 name="mountain")(x)
    return keras.Model(inputs, outputs, name="mountain_head")


def _top_blocks(inputs, spec: FeatureSpec, weights: str):
    """MobileNetV2 from just after ``spec.cut`` to its last feature map, applied to flat inputs."""
    import keras

    base = mobilenet(weights, spec.input_size)  # fresh, so every run starts from the shared weights
    names = [layer.name for layer in base.layers]
    following = base.layers[names.index(spec.cut) + 1].name
    if not (following.endswith("_expand") or following == "Conv_1"):
        raise ValueError(f"--cut {spec.cut}: cut after a whole block (e.g. block_15_add, block_13_project_BN)")
    x = keras.layers.Reshape(tuple(base.get_layer(spec.cut).output.shape[1:]))(inputs)
    block_input = x
    for layer in base.layers[names.index(spec.cut) + 1:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference mode even while training
        if isinstance(layer, keras.layers.Add):  # residual connection around an inverted-residual block
            x = layer([block_input, x])
        else:
            if layer.name.endswith("_expand"):
                block_input = x
            x = layer(x)
    return x


def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               classes: int, config: HeadConfig, spec: FeatureSpec, weights: str):
    """Fit a head; returns (model with the best-validation-loss weights, history dict)."""
    import keras

    keras.utils.set_random_seed(config.seed)
    model = build_head(x_train.shape[1], classes, config, spec, weights)
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
