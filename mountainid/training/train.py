"""Fitting the classification head on photo features.

The head is small (L2-normalised features, dropout, an optional hidden layer, softmax), so a
retrain on cached features takes seconds on a CPU; TensorFlow uses a GPU by itself when one is
present. Classes are balanced with per-class weights, so a mountain with many photos does not
crowd out one with few. Every knob is a :class:`HeadConfig` field and a CLI flag; the defaults
are the values measured best on peaks14 (``benchmarks/train.py``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mountainid.logs import Bar, event, item_level
from mountainid.vision import efficientnet_lite
from mountainid.vision.features import FeatureExtractor, mobilenet

log = logging.getLogger(__name__)

SHIFT = 0.1  # largest shift of a map by map_augment, as a share of its side (2 of 20 cells)


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
    one_cycle: bool = False  # AdamW (decoupled weight decay) with 10 % warm-up then cosine decay, all epochs
    # Augmentation of cached activation maps (needs a cut): each epoch sees new variants of the cached views
    # at no extra backbone pass, so the fine-tune does not memorise its few views.
    map_augment: bool = False  # random mirror and shift (up to SHIFT of the side) of each map
    mixup: float = 0.0  # alpha of mixup between two photos' maps and labels (0: off)
    mirror_average: bool = False  # the served model averages a map's and its mirror's probabilities
    # EfficientNet's drop-connect in the trained blocks: a residual branch is dropped for a whole example with
    # a probability rising linearly with depth to this at the last block (0: off; identity when serving).
    stochastic_depth: float = 0.0
    # The new classifier's learning rate as a multiple of the trained blocks' (the GPU recipe's 10x): its
    # logits are scaled by it and its initial weights divided by it, so Adam's steps move it that much faster.
    head_lr_scale: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def class_weights(targets: np.ndarray, classes: int) -> dict[int, float]:
    """Weights that make every class count as much as the average class."""
    counts = np.bincount(targets, minlength=classes).astype(np.float64)
    return {i: float(len(targets) / (classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def build_head(dim: int, classes: int, config: HeadConfig, extractor: FeatureExtractor):
    """features (N, dim) -> class probabilities (N, classes).

    For pooled embeddings: L2 normalisation, dropout, softmax (plus an optional hidden layer).
    For an activation map (``spec.cut``): the rest of the backbone after the cut, initialised with
    its ImageNet weights and trained, then global pooling, dropout, softmax. MobileNetV2's batch
    normalisation stays frozen in inference mode: the shared weights have it folded in (identity
    statistics). EfficientNet-Lite2's is real and trains with the blocks.
    """
    import keras

    # With one_cycle the decay is decoupled (AdamW), not an L2 term in the loss.
    regularizer = None if config.one_cycle else keras.regularizers.l2(config.weight_decay)
    inputs = keras.Input((dim,), name="features")
    spec = extractor.spec
    if spec.cut and spec.backbone == efficientnet_lite.NAME:  # FeatureSpec checked the cut is a block
        x = keras.layers.Reshape(extractor.cut_shape)(inputs)
        assert spec.cut_block is not None  # FeatureSpec checked the cut names a block
        x = efficientnet_lite.build_top(x, extractor.weights, spec.cut_block, config.stochastic_depth)
    elif spec.cut:
        x = keras.layers.GlobalAveragePooling2D()(_top_blocks(inputs, extractor))
    else:
        x = keras.layers.UnitNormalization(name="l2_normalize")(inputs)
    x = keras.layers.Dropout(config.dropout, seed=config.seed)(x)
    if config.hidden:
        x = keras.layers.Dense(config.hidden, activation="relu", kernel_regularizer=regularizer)(x)
        x = keras.layers.Dropout(0.5, seed=config.seed)(x)
    if config.head_lr_scale == 1:
        outputs = keras.layers.Dense(classes, activation="softmax", kernel_regularizer=regularizer,
                                     name="mountain")(x)
    else:  # Glorot's variance divided by scale², then the logits times scale: the same start, faster steps
        start = keras.initializers.VarianceScaling(1 / config.head_lr_scale ** 2, "fan_avg", "uniform",
                                                   seed=config.seed)
        x = keras.layers.Dense(classes, kernel_initializer=start, kernel_regularizer=regularizer,
                               name="mountain_logits")(x)
        x = keras.layers.Rescaling(config.head_lr_scale, name="head_lr_scale")(x)
        outputs = keras.layers.Activation("softmax", name="mountain")(x)
    return keras.Model(inputs, outputs, name="mountain_head")


def mirror_averaged(head, extractor: FeatureExtractor):
    """The served model: the trained head's probabilities for a map and for its mirror image, averaged.

    The head learnt with mirrored maps (``map_augment``), so both are fair views of one photo; the mirror
    costs one more pass of the trained blocks only, not of the backbone.
    """
    import keras

    from mountainid.vision.layers import custom_objects

    inputs = keras.Input(head.input_shape[1:], name="features")
    maps = keras.layers.Reshape(extractor.cut_shape)(inputs)
    mirrored = keras.layers.Reshape(head.input_shape[1:])(custom_objects()["MirrorMaps"]()(maps))
    outputs = keras.layers.Average(name="mirror_average")([head(inputs), head(mirrored)])
    return keras.Model(inputs, outputs, name="mountain_head_mirrored")


def augment_maps(x: np.ndarray, y: np.ndarray, weights: np.ndarray, shape: tuple[int, ...], config: HeadConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of flat activation maps (N, H*W*C), one-hot targets and sample weights, augmented.

    ``map_augment``: each map mirrored with probability 1/2 and shifted by up to ``SHIFT`` of its side
    (reflected at the border); ``mixup``: each map blended with another photo's of the batch, labels and
    weights alike, the first photo keeping the larger share. Deterministic in ``rng``.
    """
    maps = x.reshape((len(x), *shape))
    if config.map_augment:
        mirror = rng.random(len(x)) < 0.5
        maps = np.where(mirror[:, None, None, None], maps[:, :, ::-1], maps)
        pad = max(1, round(shape[0] * SHIFT))
        padded = np.pad(maps, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        rows, cols = rng.integers(0, 2 * pad + 1, size=(2, len(x)))
        maps = np.stack([padded[i, r:r + shape[0], c:c + shape[1]] for i, (r, c) in enumerate(zip(rows, cols,
                                                                                                     strict=True))])
    if config.mixup:
        share = rng.beta(config.mixup, config.mixup, len(x)).astype(np.float32)
        share = np.maximum(share, 1 - share)
        partner = rng.permutation(len(x))
        maps = share[:, None, None, None] * maps + (1 - share[:, None, None, None]) * maps[partner]
        y = share[:, None] * y + (1 - share[:, None]) * y[partner]
        weights = share * weights + (1 - share) * weights[partner]
    return maps.reshape(len(x), -1).astype(np.float32), y.astype(np.float32), weights.astype(np.float32)


def _augmented_batches(x: np.ndarray, targets: np.ndarray, weights: np.ndarray, shape: tuple[int, ...],
                       config: HeadConfig):
    """Training batches, shuffled and augmented anew each epoch, the same for the same seed."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self.order = self._order()

        def _order(self) -> np.ndarray:
            return np.random.default_rng((config.seed, self.epoch)).permutation(len(x))

        def __len__(self) -> int:
            return math.ceil(len(x) / config.batch_size)

        def __getitem__(self, index: int):
            rows = self.order[index * config.batch_size:(index + 1) * config.batch_size]
            rng = np.random.default_rng((config.seed, self.epoch, index))
            return augment_maps(x[rows], targets[rows], weights[rows], shape, config, rng)

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._order()

    return Batches()


def _top_blocks(inputs, extractor: FeatureExtractor):
    """MobileNetV2 from just after ``spec.cut`` to its last feature map, applied to flat inputs."""
    import keras

    spec = extractor.spec
    base = mobilenet(extractor.weights, spec.input_size)  # fresh, so every run starts from the shared weights
    names = [layer.name for layer in base.layers]
    following = base.layers[names.index(spec.cut) + 1].name
    if not (following.endswith("_expand") or following == "Conv_1"):
        raise ValueError(f"--cut {spec.cut}: cut after a whole block (e.g. block_15_add, block_13_project_BN)")
    x = keras.layers.Reshape(extractor.cut_shape)(inputs)
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


def _epoch_logger(epochs: int, on_epoch: Callable[[int, int, float], None] | None, announce: bool):
    """A callback logging one line per epoch (loss, validation accuracy, ETA) under a bar, when ``announce``:
    a fine-tune takes minutes. ``on_epoch(epoch, epochs, eta_s)`` is told either way (the run's progress
    report for the site)."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_train_begin(self, logs=None) -> None:
            self.started = time.perf_counter()
            self.bar = Bar("training", epochs if announce else 0).__enter__()  # 0: draws nothing

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            logs = logs or {}
            elapsed = time.perf_counter() - self.started
            eta = elapsed / (epoch + 1) * (epochs - epoch - 1)
            # A head trained without validation photos (refit, a fold's, a companion) has no validation accuracy.
            validated = {"val_accuracy": round(float(logs["val_accuracy"]), 4)} if "val_accuracy" in logs else {}
            if announce:
                fields: dict[str, Any] = {"epoch": epoch + 1, "epochs": epochs, "loss": round(float(logs["loss"]), 4),
                                          **validated, "seconds": round(elapsed, 1), "eta_s": round(eta)}
                event(log, "epoch finished", level=item_level(), **fields)
            self.bar.advance(note=f"loss {float(logs['loss']):.3f}"
                                  + "".join(f" {name} {value}" for name, value in validated.items()))
            if on_epoch:
                on_epoch(epoch + 1, epochs, eta)

        def on_train_end(self, logs=None) -> None:
            self.bar.__exit__()

    return EpochLog()


def _optimizer(config: HeadConfig, steps: int):
    import keras

    if not config.one_cycle:
        return keras.optimizers.Adam(config.learning_rate)
    warmup = max(1, steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate / 40, max(1, steps - warmup),
                                                      warmup_target=config.learning_rate, warmup_steps=warmup)
    return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)


def train_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               classes: int, config: HeadConfig, extractor: FeatureExtractor,
               on_epoch: Callable[[int, int, float], None] | None = None, announce: bool = True):
    """Fit a head; returns (the model, history dict).

    ``announce``: a bar and a line per epoch; off for calibration's fold heads, which the fold loop reports
    (``on_epoch`` is still told each epoch).

    Without ``one_cycle`` the weights of the best validation loss are kept (early stopping); with it
    the schedule runs to its end, as the fine-tuning recipe prescribes.
    """
    import keras

    augmenting = config.map_augment or config.mixup > 0
    if (augmenting or config.mirror_average) and not extractor.spec.cut:
        raise ValueError("--map-augment, --mixup and --mirror-average work on activation maps: they need --cut")
    if config.stochastic_depth and not (extractor.spec.cut and extractor.spec.backbone == efficientnet_lite.NAME):
        raise ValueError("--stochastic-depth drops EfficientNet-Lite2's trained blocks: it needs that backbone and --cut")
    keras.utils.set_random_seed(config.seed)
    model = build_head(x_train.shape[1], classes, config, extractor)
    steps = config.epochs * -(-len(x_train) // config.batch_size)
    model.compile(optimizer=_optimizer(config, steps),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    has_val = len(x_val) > 0
    callbacks = [_epoch_logger(config.epochs, on_epoch, announce)] if announce or on_epoch else []
    if has_val and not config.one_cycle:
        callbacks.append(keras.callbacks.EarlyStopping("val_loss", patience=config.patience,
                                                       restore_best_weights=True))
    started = time.perf_counter()
    validation = (x_val, keras.utils.to_categorical(y_val, classes)) if has_val else None
    onehot = keras.utils.to_categorical(y_train, classes)
    if augmenting:
        per_class = class_weights(y_train, classes) if config.balance else dict.fromkeys(range(classes), 1.0)
        weights = np.asarray([per_class[t] for t in y_train], np.float32)
        history = model.fit(_augmented_batches(x_train, onehot, weights, extractor.cut_shape, config),
                            epochs=config.epochs, verbose=0, callbacks=callbacks, validation_data=validation)
    else:
        history = model.fit(x_train, onehot, epochs=config.epochs, batch_size=config.batch_size, verbose=0,
                            shuffle=True, callbacks=callbacks, validation_data=validation,
                            class_weight=class_weights(y_train, classes) if config.balance else None)
    event(log, "head trained", epochs=len(history.history["loss"]), train=len(x_train), val=len(x_val),
          classes=classes, seconds=round(time.perf_counter() - started, 1))
    if config.mirror_average:
        model = mirror_averaged(model, extractor)
    return model, {name: [float(v) for v in values] for name, values in history.history.items()}
