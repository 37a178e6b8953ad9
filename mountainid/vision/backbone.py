"""The ImageNet backbone: MobileNetV2, loaded once per process, one forward pass per batch.

One pass gives both what the filter needs (the 1000 ImageNet class probabilities) and what the
classifier and the similar-photo gallery need (the 1280-d pooled embedding), so a photo is never
run through the network twice. The pass is a compiled ``tf.function`` (about 7x faster than an
eager Keras call for a single photo) and is safe to call from several threads.
"""

from __future__ import annotations

import hashlib
import logging
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from mountainid.config import ConfigError
from mountainid.logs import event

log = logging.getLogger(__name__)

INPUT_SIZE = 224
EMBEDDING_DIM = 1280
# The fast tier's features (``training.job``): the activation map after block 13. The same pass gives it, so a
# head on them costs an upload only its own top blocks (``Backbone.analyze_all``).
SHARED_CUT = "block_13_project_BN"


class BackboneError(ConfigError):
    """The weights could not be loaded; raised at start-up, naming the path and the setting to fix."""


def weights_fingerprint(weights: str) -> str:
    """A short id of the weights, so embeddings from different weights never mix in the cache."""
    if weights == "imagenet":
        return "imagenet"
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:10]


def _require_file(weights: str) -> None:
    if weights != "imagenet" and not Path(weights).is_file():
        raise BackboneError(f"ImageNet weights file not found: {weights} (set MOUNTAINID_WEIGHTS "
                            "to a MobileNetV2 .weights.h5 file, or to 'imagenet' to download them)")


def check_weights(weights: str) -> None:
    """Fail now, naming the path, if the weights file is missing or damaged; no TensorFlow needed.

    For processes that must not load TensorFlow before forking (functions-framework imports the
    function in gunicorn's master, then forks the worker; TensorFlow's thread pools do not survive
    a fork): they check here at start-up and load the model in the worker, on first use. Reading
    every dataset (~35 ms) catches truncated or overwritten files, not just a missing one.
    """
    _require_file(weights)
    if weights == "imagenet":
        return
    import h5py

    def read(_: str, item: object) -> None:
        if isinstance(item, h5py.Dataset):
            item[()]

    try:
        with h5py.File(weights, "r") as handle:
            handle.visititems(read)
    except Exception as error:  # h5py raises OSError, KeyError, ValueError... for a damaged file
        raise BackboneError(f"cannot load ImageNet weights from {weights}: {error}") from error


class Backbone:
    """MobileNetV2 with its ImageNet head; ``analyze`` returns (probabilities, embeddings)."""

    def __init__(self, weights: str, input_size: int = INPUT_SIZE) -> None:
        _require_file(weights)
        started = time.perf_counter()
        import keras
        import tensorflow as tf

        try:
            full = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3),
                                                  weights=weights, include_top=True, classes=1000)
            self.fingerprint = weights_fingerprint(weights)
        except Exception as error:  # h5py/keras raise many types for a bad file, urllib for no network
            if weights == "imagenet":
                raise BackboneError(f"cannot download the ImageNet weights ({str(error).splitlines()[0]}); offline, "
                                    "set MOUNTAINID_WEIGHTS to a MobileNetV2 .weights.h5 file, e.g. ../shared/models/"
                                    "imagenet/mobilenet_v2_1.0_224_imagenet.weights.h5") from error
            raise BackboneError(f"cannot load ImageNet weights from {weights}: {error}") from error
        # Found by type, not name: Keras numbers layer names per process ("…_1" for a second model).
        pooled = next(layer for layer in full.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
        self.keras_model = keras.Model(full.input, [full.output, pooled.output, full.get_layer(SHARED_CUT).output],
                                       name="mobilenet_v2_scores_embedding_and_maps")
        self.input_size = input_size
        self.backbone_id = f"mobilenet_v2_{input_size}_{self.fingerprint}"
        spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32)
        self._forward = tf.function(lambda x: self.keras_model(x / 127.5 - 1.0, training=False),
                                    input_signature=[spec])
        self.analyze(np.zeros((1, input_size, input_size, 3), np.float32))  # trace once, at start-up
        event(log, "backbone loaded", backbone_id=self.backbone_id, weights=weights,
              seconds=round(time.perf_counter() - started, 2))

    def analyze(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images: float32 (N, size, size, 3) in [0, 255] from ``to_model_input``.

        Returns ImageNet probabilities (N, 1000) and pooled embeddings (N, 1280).
        """
        probs, embeddings, _ = self._outputs(images)
        return probs.numpy(), embeddings.numpy()

    def analyze_all(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`analyze`, and the same pass's ``SHARED_CUT`` activation maps, flattened (N, 7 * 7 * 160)."""
        probs, embeddings, maps = self._outputs(images)
        return probs.numpy(), embeddings.numpy(), maps.numpy().reshape(len(maps), -1)

    def _outputs(self, images: np.ndarray):
        if images.ndim == 3:
            images = images[None]
        return self._forward(np.asarray(images, np.float32))

    def analyze_batches(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Like analyze, in fixed-size batches so memory stays flat on large sets."""
        outputs = [self.analyze(images[start:start + batch_size]) for start in range(0, len(images), batch_size)]
        if not outputs:
            return np.zeros((0, 1000), np.float32), np.zeros((0, EMBEDDING_DIM), np.float32)
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])


def get_backbone(weights: str, input_size: int = INPUT_SIZE) -> Backbone:
    """The process-wide backbone for these weights (loaded on first use, then shared)."""
    return _shared_backbone(weights, int(input_size))


@lru_cache(maxsize=4)
def _shared_backbone(weights: str, input_size: int) -> Backbone:
    return Backbone(weights, input_size)
