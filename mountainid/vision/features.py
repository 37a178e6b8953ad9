"""How a photo becomes the classifier's feature vector: a :class:`FeatureSpec` and its extractor.

Training computes these features for every photo and the predictor recomputes exactly the same ones
for an upload, so the extractor lives here, below both; the features' cache in the bucket is
training's (``mountainid.training.features``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from mountainid.arrays import in_batches
from mountainid.config import Settings
from mountainid.vision import efficientnet_lite
from mountainid.vision.backbone import (
    EMBEDDING_DIM,
    INPUT_SIZE,
    SHARED_CUT,
    Backbone,
    get_backbone,
    weights_fingerprint,
)

MOBILENET_V2 = "mobilenet_v2"
Network = tuple[Callable[[np.ndarray], np.ndarray], int, tuple[int, ...]]  # forward, dim, the cut's map shape
BACKBONES = (MOBILENET_V2, efficientnet_lite.NAME)


@dataclass(frozen=True)
class FeatureSpec:
    """How a photo becomes a feature vector. The default is the filter's cached embedding.

    With ``cut`` set, the features are the activation map after that layer (flattened) and the
    classifier holds the rest of the network, so its top blocks are fine-tuned: a MobileNetV2 layer
    name (``block_13_project_BN``) or an EfficientNet-Lite2 block (``block9``).
    """

    input_size: int = INPUT_SIZE
    flip: bool = False  # average the pooled embedding of the photo and its mirror image
    cut: str = ""  # e.g. "block_15_add": fine-tune every block after this layer
    backbone: str = MOBILENET_V2  # or "efficientnet_lite2" (the classifier weights)

    def __post_init__(self) -> None:
        if self.cut and self.flip:
            raise ValueError("--flip averages pooled embeddings; it does not apply with --cut")
        if self.backbone not in BACKBONES:
            raise ValueError(f"--backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.cut and self.backbone == efficientnet_lite.NAME and self.cut_block is None:
            raise ValueError(f"--cut {self.cut}: name an EfficientNet-Lite2 block, block0 to block19")

    @property
    def is_filter_embedding(self) -> bool:
        return self == FeatureSpec()

    @property
    def cut_block(self) -> int | None:
        """The EfficientNet-Lite2 block after which the network is cut (``block9`` -> 9)."""
        number = self.cut.removeprefix("block")
        last = len(efficientnet_lite.blocks()) - 1
        return int(number) if number.isdigit() and int(number) < last else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        return cls(int(data["input_size"]), bool(data["flip"]), str(data.get("cut", "")),
                   str(data.get("backbone", MOBILENET_V2)))

    def tag(self) -> str:
        # Models saved before the backbone field keep their tag, so their cached features stay valid.
        fields = {k: v for k, v in self.to_dict().items() if k != "backbone" or v != MOBILENET_V2}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def mobilenet(weights: str, input_size: int):
    """A fresh headless MobileNetV2 with the shared weights (the file holds the full model)."""
    import keras

    base = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3), include_top=False,
                                          weights="imagenet" if weights == "imagenet" else None)
    if weights != "imagenet":
        base.load_weights(weights, skip_mismatch=True)  # only the 1000-class top is skipped
    return base


@dataclass
class FeatureExtractor:
    """Computes the features of a :class:`FeatureSpec` with the configured weights (thread-safe).

    ``feature_id`` names the backbone, input size, weights file (a hash of it) and spec, so features
    of two backbones, or of two versions of one backbone's weights, never share a cache entry. The
    network is built on first use: a served head whose features come from the filter's own pass
    (``in_backbone_pass``) never builds one.
    """

    settings: Settings
    spec: FeatureSpec = field(default_factory=FeatureSpec)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._network: Network | None = None
        if self.spec.is_filter_embedding:
            self.weights = self.settings.weights
            backbone: Backbone = get_backbone(self.weights)  # also checks the weights file exists
            self.feature_id = backbone.backbone_id
            self._network = (lambda images: backbone.analyze(images)[1], EMBEDDING_DIM, ())
            return
        if self.spec.backbone == efficientnet_lite.NAME:
            self.weights = efficientnet_lite.resolve_weights(self.settings.classifier_weights)
            fingerprint = weights_fingerprint(self.weights)
        else:
            self.weights = self.settings.weights
            fingerprint = get_backbone(self.weights).fingerprint
        self.feature_id = f"{self.spec.backbone}_{self.spec.input_size}_{fingerprint}-{self.spec.tag()}"

    def _built(self) -> Network:
        """The network, built once."""
        with self._lock:
            if self._network is None:
                self._network = self._build()
            return self._network

    def _build(self) -> Network:
        import keras
        import tensorflow as tf

        size = self.spec.input_size
        if self.spec.backbone == efficientnet_lite.NAME:
            base = efficientnet_lite.build(self.weights, size, cut=self.spec.cut_block)
            output = base.output
        else:
            base = mobilenet(self.weights, size)
            output = base.get_layer(self.spec.cut).output if self.spec.cut else base.output
        cut_shape: tuple[int, ...] = ()
        if self.spec.cut:
            cut_shape = tuple(output.shape[1:])
            output = keras.layers.Flatten()(output)
        elif len(output.shape) == 4:
            output = keras.layers.GlobalAveragePooling2D()(output)
        model = keras.Model(base.input, output)
        spec = tf.TensorSpec([None, size, size, 3], tf.float32)

        def forward(images: tf.Tensor) -> tf.Tensor:
            outputs = model(images / 127.5 - 1.0, training=False)
            if self.spec.flip:
                outputs = (outputs + model(tf.reverse(images, axis=[2]) / 127.5 - 1.0, training=False)) / 2
            return outputs

        compiled = tf.function(forward, input_signature=[spec])
        return (lambda images: compiled(np.asarray(images, np.float32)).numpy(),
                int(np.prod(model.output.shape[1:])), cut_shape)

    @property
    def dim(self) -> int:
        return self._built()[1]

    @property
    def cut_shape(self) -> tuple[int, ...]:
        """The activation map's shape (height, width, channels) before flattening; () without a cut."""
        return self._built()[2]

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def in_backbone_pass(self) -> bool:
        """Whether the shared backbone's pass gives these features too (``Backbone.analyze_all``): serving then
        needs no pass of this extractor's own."""
        return self.spec == FeatureSpec(cut=SHARED_CUT)

    def features(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """float32 (N, size, size, 3) in [0, 255] -> (N, dim)."""
        if images.ndim == 3:
            images = images[None]
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return in_batches(self._built()[0], images, batch_size).astype(np.float32)
