"""Fine-tuning the top of the backbone: trains, keeps BN frozen, and serves through the predictor."""

from __future__ import annotations

import numpy as np

from mountainid.events import InProcessBus
from mountainid.predict import Predictor
from mountainid.registry import Registry
from mountainid.store import LocalBlobStore
from mountainid.training.features import FeatureSpec
from mountainid.training.job import JobConfig, train_and_register
from mountainid.training.train import HeadConfig
from tests.training.conftest import copy_objects

# Smallest useful fine-tune: block 16 and the last convolution, one augmented view, two epochs.
TINY = JobConfig(FeatureSpec(cut="block_15_add"), HeadConfig(dropout=0.5, learning_rate=3e-4, epochs=2,
                                                             augment_views=1), lease_s=600)


def test_fine_tuned_model_is_registered_served_and_keeps_bn_in_inference_mode(tmp_path, template,
                                                                              settings) -> None:
    import keras

    store = LocalBlobStore(tmp_path / "bucket")
    copy_objects(template, store)
    result = train_and_register(settings, store, InProcessBus(), TINY)
    assert result.status == "promoted"
    features = {name.split("/")[1] for name in store.list_names("embeddings/")}
    assert len(features) == 2  # the filter's embeddings (gallery) + the cut activations (with views)
    assert any(name.endswith("-v1.npy") for name in store.list_names("embeddings/"))
    predictor = Predictor.load(store, result.version, settings)
    trained = predictor.info  # metrics.json
    assert trained["feature_id"] == predictor.extractor.feature_id
    bn = [layer for layer in _model(store, result.version).layers
          if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and all(not layer.trainable for layer in bn)
    for layer in bn:  # still the folded identity statistics of the shared weights
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), 0.0, atol=1e-6)
    photo = store.get(store.list_names("accepted/lhotse/")[0])
    prediction = predictor.predict(photo)
    assert prediction.model_version == result.version
    assert abs(sum(g.probability for g in prediction.guesses) - 1.0) < 1e-3  # three classes, all listed


def _model(store, version):
    from mountainid.predict import _load_keras

    return _load_keras(Registry(store).read(version, "model.keras"))
