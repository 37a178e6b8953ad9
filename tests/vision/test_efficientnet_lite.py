"""The Keras port of EfficientNet-Lite2 against its PyTorch reference, and the weights reader's errors.

The reference is the implementation the weights were published for (PyPI ``efficientnet-lite-pytorch``,
a test-only dependency with PyTorch): the port must give the same ImageNet logits on real photos.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mountainid.vision import efficientnet_lite
from mountainid.vision.image import decode_for_model

SIZE = 260  # the size Lite2 was trained at


@pytest.fixture(scope="module")
def photos(shared_dir: Path) -> np.ndarray:
    """Two mountains and two streets, [-1, 1], as the classifier sees them."""
    paths = [*sorted((shared_dir / "data" / "peaks14" / "K2").iterdir())[:2],
             *sorted((shared_dir / "data" / "scenes" / "street").iterdir())[:2]]
    return np.stack([decode_for_model(p.read_bytes(), SIZE, 10**8) for p in paths]) / 127.5 - 1.0


def test_port_gives_the_reference_logits_on_real_photos(photos: np.ndarray) -> None:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    path = efficientnet_lite.package_weights_path()
    reference = EfficientNet.from_pretrained("efficientnet-lite2", weights_path=path).eval()
    with torch.no_grad():
        expected = reference(torch.from_numpy(photos.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    port = np.asarray(efficientnet_lite.build(path, SIZE, include_top=True)(photos.astype(np.float32)))
    np.testing.assert_allclose(port, expected, atol=1e-3)
    assert list(port.argmax(axis=1)) == list(expected.argmax(axis=1))
    assert list(port.argmax(axis=1)[:2]) == [970, 970]  # ImageNet's "alp" for the two K2 photos
    assert not set(port.argmax(axis=1)[2:]) & {970, 972, 979, 980}  # and no terrain class for the streets


def test_the_network_cuts_between_blocks_and_the_top_rebuilds_the_rest(photos: np.ndarray) -> None:
    import keras

    path = efficientnet_lite.package_weights_path()
    pooled = np.asarray(efficientnet_lite.build(path, SIZE)(photos.astype(np.float32)))
    lower = efficientnet_lite.build(path, SIZE, cut=9)
    activations = np.asarray(lower(photos.astype(np.float32)))
    start = keras.Input(activations.shape[1:])
    upper = keras.Model(start, efficientnet_lite.build_top(start, path, cut=9))
    assert len(efficientnet_lite.blocks()) == 21
    np.testing.assert_allclose(np.asarray(upper(activations, training=False)), pooled, atol=1e-4)


def test_weights_that_are_missing_damaged_or_hostile_fail_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(efficientnet_lite.WeightsError, match="MOUNTAINID_CLASSIFIER_WEIGHTS"):
        efficientnet_lite.resolve_weights(str(tmp_path / "nope.pth"))
    source = Path(efficientnet_lite.package_weights_path()).read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(source[: len(source) // 2])
    with pytest.raises(efficientnet_lite.WeightsError, match="truncated.pth"):
        efficientnet_lite.read_torch_state_dict(str(truncated))
    # A pickle that would run a command if it were trusted, in the header or in the state dict.
    payload = b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."
    for headers in ((), (0x1950A86A20F9469CFC6C, 1001, {})):
        hostile = tmp_path / "hostile.pth"
        with hostile.open("wb") as handle:
            for header in headers:
                pickle.dump(header, handle)
            handle.write(payload)
        with pytest.raises(efficientnet_lite.WeightsError, match="unexpected object os.system"):
            efficientnet_lite.read_torch_state_dict(str(hostile))
    assert not (tmp_path / "pwned").exists()
